namespace Idempotency.Storage;

/// <summary>A store that can claim a single message's key at commit time (<see cref="ClaimTiming.AtCommit"/>).</summary>
/// <remarks>Its <see cref="IIdempotencyStore.BeginAsync"/> returns <see cref="IDeferredClaimTransaction"/> instances.</remarks>
public interface IDeferredClaimStore : IIdempotencyStore
{
    /// <summary>Looks up a committed key without claiming it and without opening a transaction.</summary>
    /// <param name="request">The key to look up.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The stored record as an <see cref="ClaimStatus.AlreadyProcessed"/> result, or <see langword="null"/> when the key is not committed.</returns>
    /// <exception cref="IdempotencyStoreUnavailableException">The store cannot be reached.</exception>
    ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default);
}
