using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>Typed access to the Redis transaction from a handler's context.</summary>
public static class RedisContextExtensions
{
    /// <summary>
    /// Gets the MULTI/EXEC transaction the handler's Redis writes must join: they commit atomically with the completion
    /// record, and only if this worker still owns the key's lease. Queue writes without awaiting them.
    /// </summary>
    /// <param name="context">The handler's context.</param>
    /// <returns>The transaction.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the Redis store.</exception>
    /// <remarks>On a Redis Cluster it is the MULTI/EXEC of the message's hash slot: write only keys of that slot in it
    /// (<see cref="GetColocatedRedisKey"/>).</remarks>
    public static ITransaction GetRedisTransaction(this MessageContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        return Get(context.Transaction).GetRedisTransaction(context.HandlerName, context.Key);
    }

    /// <summary>
    /// Gets a Redis key of your own that lives in the same hash slot as the message's idempotency key, so the handler
    /// can write it in <see cref="GetRedisTransaction(MessageContext)"/> on a Redis Cluster too.
    /// </summary>
    /// <param name="context">The handler's context.</param>
    /// <param name="name">A name without braces, e.g. <c>"balance"</c>.</param>
    /// <returns><c>{KeyPrefix}:{name}:{{handler}|{key}}</c>.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the Redis store.</exception>
    public static RedisKey GetColocatedRedisKey(this MessageContext context, string name)
    {
        ArgumentNullException.ThrowIfNull(context);
        return Get(context.Transaction).Store.GetColocatedKey(context.HandlerName, context.Key, name);
    }

    /// <summary>Gets the MULTI/EXEC transaction a batch shares (standalone server; on a cluster a batch has one per hash slot: use each message's).</summary>
    /// <param name="batch">The batch context.</param>
    /// <returns>The transaction.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the Redis store.</exception>
    public static ITransaction GetRedisTransaction(this BatchContext batch) => Get(batch?.Transaction).RedisTransaction;

    /// <summary>Gets the store's database, for reads; they are not part of the atomic commit.</summary>
    /// <param name="context">The handler's context.</param>
    /// <returns>The database.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the Redis store.</exception>
    public static IDatabase GetRedisDatabase(this MessageContext context) => Get(context?.Transaction).Database;

    private static RedisIdempotencyTransaction Get(Storage.IIdempotencyTransaction? transaction)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        return transaction as RedisIdempotencyTransaction
            ?? throw new InvalidOperationException($"The store transaction is a {transaction.GetType().Name}; a Redis transaction needs the Redis store (the layered store's handlers write to its source of truth).");
    }
}
