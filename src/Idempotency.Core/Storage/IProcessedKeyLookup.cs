namespace Idempotency.Storage;

/// <summary>
/// A store that can tell whether keys were committed without claiming them and without opening a transaction: a
/// duplicate then costs one read. The pipeline uses it when duplicates are frequent, and adapters use
/// <see cref="FindProcessedBatchAsync"/> through <see cref="IdempotentProcessor.LookUpProcessedAsync"/> to check the
/// messages queued behind one another in one round trip.
/// </summary>
public interface IProcessedKeyLookup
{
    /// <summary>Looks up a committed key without claiming it and without opening a transaction.</summary>
    /// <param name="request">The key to look up.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The stored record as an <see cref="ClaimStatus.AlreadyProcessed"/> result, or <see langword="null"/> when the key is not committed.</returns>
    /// <exception cref="IdempotencyStoreUnavailableException">The store cannot be reached.</exception>
    ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default);

    /// <summary>Looks up several committed keys of one handler in one step, without claiming them.</summary>
    /// <param name="requests">The keys to look up, all of one handler.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>One entry per request, in order: the stored record, or <see langword="null"/> when the key is not committed.</returns>
    /// <exception cref="IdempotencyStoreUnavailableException">The store cannot be reached.</exception>
    ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default);
}
