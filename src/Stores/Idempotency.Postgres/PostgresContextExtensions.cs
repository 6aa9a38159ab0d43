using Idempotency.Storage;
using Npgsql;

namespace Idempotency.Postgres;

/// <summary>Typed access to the PostgreSQL transaction from a handler's context.</summary>
public static class PostgresContextExtensions
{
    /// <summary>Gets the store's PostgreSQL transaction, which the handler's writes must join.</summary>
    /// <param name="context">The handler's context.</param>
    /// <returns>The transaction.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the PostgreSQL store.</exception>
    public static NpgsqlTransaction GetNpgsqlTransaction(this MessageContext context) => Get(context?.Transaction).Transaction;

    /// <summary>Gets the store's open PostgreSQL connection.</summary>
    /// <param name="context">The handler's context.</param>
    /// <returns>The connection.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the PostgreSQL store.</exception>
    public static NpgsqlConnection GetNpgsqlConnection(this MessageContext context) => Get(context?.Transaction).Connection;

    /// <summary>Gets the PostgreSQL transaction a batch shares.</summary>
    /// <param name="batch">The batch context.</param>
    /// <returns>The transaction.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the PostgreSQL store.</exception>
    public static NpgsqlTransaction GetNpgsqlTransaction(this BatchContext batch) => Get(batch?.Transaction).Transaction;

    /// <summary>Gets the open PostgreSQL connection a batch shares.</summary>
    /// <param name="batch">The batch context.</param>
    /// <returns>The connection.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the PostgreSQL store.</exception>
    public static NpgsqlConnection GetNpgsqlConnection(this BatchContext batch) => Get(batch?.Transaction).Connection;

    /// <summary>
    /// Gets the store's open connection and transaction together, for Dapper or raw Npgsql commands in one line:
    /// <c>var (connection, transaction) = context.Postgres();</c> then <c>connection.ExecuteAsync(sql, args, transaction)</c>.
    /// </summary>
    /// <param name="context">The handler's context.</param>
    /// <returns>The connection and the transaction the handler's writes must join.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the PostgreSQL store.</exception>
    public static PostgresHandlerContext Postgres(this MessageContext context)
    {
        var transaction = Get(context?.Transaction);
        return new PostgresHandlerContext(transaction.Connection, transaction.Transaction);
    }

    /// <summary>Gets the open connection and transaction a batch shares: <c>var (connection, transaction) = batch.Postgres();</c>.</summary>
    /// <param name="batch">The batch context.</param>
    /// <returns>The connection and the transaction.</returns>
    /// <exception cref="InvalidOperationException">The processor does not use the PostgreSQL store.</exception>
    public static PostgresHandlerContext Postgres(this BatchContext batch)
    {
        var transaction = Get(batch?.Transaction);
        return new PostgresHandlerContext(transaction.Connection, transaction.Transaction);
    }

    private static PostgresIdempotencyTransaction Get(IIdempotencyTransaction? transaction)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        var current = transaction;
        while (current is ILayeredTransaction layered)
        {
            current = layered.SourceTransaction;
        }

        return current as PostgresIdempotencyTransaction
            ?? throw new InvalidOperationException($"The store transaction is a {transaction.GetType().Name}; a PostgreSQL transaction needs the PostgreSQL store (or a layered store over it).");
    }
}
