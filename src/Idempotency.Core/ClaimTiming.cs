namespace Idempotency;

/// <summary>When a single message's key is claimed in its store transaction.</summary>
/// <remarks>Batches always claim every key first, in one round trip; this choice is about single messages.</remarks>
public enum ClaimTiming
{
    /// <summary>
    /// Claim the key before the handler runs (the default). A duplicate never runs the handler, and a second worker
    /// holding the same key waits for the first one's commit. Costs a round trip and a second write of the key row.
    /// </summary>
    BeforeHandler = 0,

    /// <summary>
    /// Run the handler first and insert the key, already completed, with the commit: one round trip and one key write
    /// fewer per new message. A duplicate that reaches the commit rolls back all the handler wrote and is reported as a
    /// duplicate, so effects in the transaction stay exactly once; work outside the transaction (an HTTP call, a log
    /// line) may run for a duplicate. While duplicates are frequent, or when the broker marks a message as redelivered,
    /// the key is looked up first so a duplicate costs one read. Needs a store that supports it
    /// (<see cref="Storage.IDeferredClaimStore"/>: PostgreSQL, in-memory).
    /// </summary>
    AtCommit = 1,
}
