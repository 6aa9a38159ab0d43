namespace Idempotency.Storage;

/// <summary>A store that can claim a single message's key at commit time (<see cref="ClaimTiming.AtCommit"/>).</summary>
/// <remarks>
/// Its <see cref="IIdempotencyStore.BeginAsync"/> returns <see cref="IDeferredClaimTransaction"/> instances. It can look
/// keys up (<see cref="IProcessedKeyLookup"/>): a duplicate found before the handler runs costs no transaction.
/// </remarks>
public interface IDeferredClaimStore : IIdempotencyStore, IProcessedKeyLookup
{
}
