using Idempotency.Redis;
using StackExchange.Redis;

namespace Idempotency.TestSupport;

/// <summary>
/// Business state kept in Redis for the adapter suites' Redis-store runs: the handler counts one application per key
/// in a hash, inside the store's MULTI/EXEC, so the count commits exactly when the key's completion does.
/// </summary>
public sealed class RedisEffects(RedisFixture redis)
{
    /// <summary>Gets the hash holding one counter per key.</summary>
    public string Hash { get; } = RedisFixture.NewPrefix() + ":effects";

    /// <summary>Creates a store with its own key prefix on the fixture's server.</summary>
    public RedisIdempotencyStore CreateStore() => redis.CreateStore();

    /// <summary>A handler that adds 1 to the key's counter in the store's transaction; <paramref name="fail"/> makes it throw.</summary>
    public IIdempotentMessageHandler Handler(Func<MessageContext, bool>? fail = null) => IdempotentHandler.Create((context, cancellationToken) =>
    {
        if (fail?.Invoke(context) == true)
        {
            throw new InvalidOperationException("poison message: handler failed on purpose");
        }

        // Queued on the MULTI/EXEC: applied only if the completion commits.
        _ = context.GetRedisTransaction().HashIncrementAsync(Hash, context.Key);
        return ValueTask.CompletedTask;
    });

    /// <summary>Reads how many keys have an effect, the sum of all effects and the largest count of any key.</summary>
    public async Task<(long Keys, long Total, long Max)> ReadAsync()
    {
        var entries = await redis.Connection.GetDatabase().HashGetAllAsync(Hash);
        var counts = entries.Select(e => (long)e.Value).ToList();
        return (counts.Count, counts.Sum(), counts.Count == 0 ? 0 : counts.Max());
    }
}
