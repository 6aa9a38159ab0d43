using Idempotency.Redis;

namespace Idempotency.TestSupport;

/// <summary>
/// Business state kept in Redis for the adapter suites' Redis-store runs (see <see cref="EffectStore"/>): one counter
/// per key in a hash, incremented inside the store's MULTI/EXEC, so the count commits exactly when the key's
/// completion does.
/// </summary>
public sealed class RedisEffects(RedisFixture redis)
{
    /// <summary>Gets the hash holding one counter per key.</summary>
    public string Hash { get; } = RedisFixture.NewPrefix() + ":effects";

    /// <summary>Creates a store with its own key prefix on the fixture's server.</summary>
    public RedisIdempotencyStore CreateStore() => redis.CreateStore();

    /// <summary>Adds 1 to the key's counter in the store's transaction: applied only if the completion commits.</summary>
    public void Apply(MessageContext context) => _ = context.GetRedisTransaction().HashIncrementAsync(Hash, context.Key);

    /// <summary>Reads how many keys have an effect, the sum of all effects and the largest count of any key.</summary>
    public async Task<EffectCounts> ReadAsync()
    {
        var entries = await redis.Connection.GetDatabase().HashGetAllAsync(Hash);
        var counts = entries.Select(e => (long)e.Value).ToList();
        return new EffectCounts(counts.Count, counts.Sum(), counts.Count == 0 ? 0 : counts.Max());
    }
}
