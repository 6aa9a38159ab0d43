namespace Idempotency.Storage;

/// <summary>What a claim found.</summary>
public enum ClaimStatus
{
    /// <summary>The key is new and now belongs to this transaction until it commits or rolls back.</summary>
    Claimed = 0,

    /// <summary>The key was processed and committed before.</summary>
    AlreadyProcessed = 1,

    /// <summary>Another worker holds a lease on the key (stores with leases only).</summary>
    HeldByAnother = 2,
}
