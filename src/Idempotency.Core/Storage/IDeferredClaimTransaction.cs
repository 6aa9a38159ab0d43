using Idempotency.Outbox;

namespace Idempotency.Storage;

/// <summary>A store transaction that can claim its key together with the commit.</summary>
public interface IDeferredClaimTransaction : IIdempotencyTransaction
{
    /// <summary>
    /// Inserts the key as completed, writes the outgoing messages and commits, in one step. When another transaction
    /// committed the key first, rolls everything back instead, handler writes included.
    /// </summary>
    /// <param name="completion">The key and its completion record.</param>
    /// <param name="outbox">Messages to send after the commit; empty when none.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see cref="ClaimResult.Claimed"/> when committed; an <see cref="ClaimStatus.AlreadyProcessed"/> result with the stored record when rolled back.</returns>
    ValueTask<ClaimResult> ClaimAndCommitAsync(CompletionRecord completion, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default);
}
