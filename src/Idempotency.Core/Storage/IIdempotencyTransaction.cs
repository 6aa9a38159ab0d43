using Idempotency.Outbox;

namespace Idempotency.Storage;

/// <summary>One store transaction: claims, the handler's own writes and the completion records commit or roll back together.</summary>
public interface IIdempotencyTransaction : IAsyncDisposable
{
    /// <summary>Claims one key.</summary>
    /// <param name="request">The claim.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>Whether the key was claimed, already processed, or held by another worker.</returns>
    ValueTask<ClaimResult> ClaimAsync(ClaimRequest request, CancellationToken cancellationToken = default);

    /// <summary>Claims several keys in one round trip where the store can.</summary>
    /// <param name="requests">Distinct keys, sorted by the caller in ordinal key order so that concurrent transactions lock rows in the same order.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>One result per request, in the same order.</returns>
    ValueTask<IReadOnlyList<ClaimResult>> ClaimBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default);

    /// <summary>Records the completions and the outgoing messages, then commits everything, handler writes included.</summary>
    /// <param name="completions">One record per claimed key whose handler succeeded.</param>
    /// <param name="outbox">Messages to send after the commit; empty when none.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the commit is durable.</returns>
    /// <exception cref="ClaimLostException">A lease-based store found its claim taken over; nothing was committed.</exception>
    ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default);

    /// <summary>
    /// Gets a value indicating whether the transaction's connection is demonstrably broken (closed or failed under it):
    /// a handler exception then counts as a store outage, not as the handler's failure.
    /// </summary>
    /// <value>Defaults to <see langword="false"/> for stores that cannot tell; the pipeline then pings the store.</value>
    bool IsBroken => false;

    /// <summary>Rolls back everything: claims, handler writes, nothing recorded.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when rolled back.</returns>
    ValueTask RollbackAsync(CancellationToken cancellationToken = default);
}
