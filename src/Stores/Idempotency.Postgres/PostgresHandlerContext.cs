using Npgsql;

namespace Idempotency.Postgres;

/// <summary>The open connection and the transaction a handler's writes must join, from <c>context.Postgres()</c>.</summary>
/// <param name="Connection">The store's open connection.</param>
/// <param name="Transaction">The store's transaction on <paramref name="Connection"/>; pass it to every command.</param>
public readonly record struct PostgresHandlerContext(NpgsqlConnection Connection, NpgsqlTransaction Transaction);
