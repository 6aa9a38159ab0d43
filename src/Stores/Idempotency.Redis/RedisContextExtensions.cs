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
    public static ITransaction GetRedisTransaction(this MessageContext context) => Get(context?.Transaction).RedisTransaction;

    /// <summary>Gets the MULTI/EXEC transaction a batch shares.</summary>
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
            ?? throw new InvalidOperationException($"The store transaction is a {transaction.GetType().Name}; a Redis transaction needs the Redis store (the layered store's handlers write to PostgreSQL).");
    }
}
