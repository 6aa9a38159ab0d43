namespace Idempotency.Postgres;

/// <summary>
/// A store transaction that runs a PostgreSQL store transaction inside it (the layered Redis + PostgreSQL store's),
/// so <c>context.GetNpgsqlTransaction()</c> reaches the Npgsql transaction through it.
/// </summary>
public interface IPostgresTransactionSource
{
    /// <summary>Gets the PostgreSQL store transaction the handler's writes must join.</summary>
    /// <exception cref="InvalidOperationException">No PostgreSQL transaction is open (no key was claimed).</exception>
    PostgresIdempotencyTransaction PostgresTransaction { get; }
}
