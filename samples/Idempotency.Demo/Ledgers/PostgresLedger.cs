using System.Text.Json;
using Dapper;
using Idempotency.Postgres;
using Idempotency.Storage;
using Npgsql;

namespace Idempotency.Demo.Ledgers;

/// <summary>The business table lives in PostgreSQL next to the claim table and is written in the same transaction.</summary>
internal sealed class PostgresLedger : IDemoLedger
{
    private readonly NpgsqlDataSource _dataSource;
    private readonly string _table;

    private PostgresLedger(NpgsqlDataSource dataSource, PostgresIdempotencyStore store, string table)
    {
        _dataSource = dataSource;
        PostgresStore = store;
        _table = table;
    }

    public string StoreName => "postgres";

    public IIdempotencyStore Store => PostgresStore;

    public PostgresIdempotencyStore PostgresStore { get; }

    public static async Task<PostgresLedger> CreateAsync(string connectionString, string scenario, CancellationToken cancellationToken)
    {
        var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(connectionString) { MaxPoolSize = 50 }.ConnectionString);
        var schema = "demo";
        var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = $"{scenario}_processed", OutboxTable = $"{scenario}_outbox" });
        await using (var connection = await dataSource.OpenConnectionAsync(cancellationToken))
        {
            await connection.ExecuteAsync($"CREATE SCHEMA IF NOT EXISTS {schema}; DROP TABLE IF EXISTS {schema}.{scenario}_processed, {schema}.{scenario}_outbox, {schema}.{scenario}_orders");
            await connection.ExecuteAsync($"CREATE TABLE {schema}.{scenario}_orders (order_id text PRIMARY KEY, amount bigint NOT NULL, applied int NOT NULL)");
        }

        await store.EnsureSchemaAsync(cancellationToken);
        return new PostgresLedger(dataSource, store, $"{schema}.{scenario}_orders");
    }

    public async ValueTask ApplyAsync(MessageContext context, CancellationToken cancellationToken)
    {
        var order = JsonSerializer.Deserialize<Order>(context.Body.Span)!;
        await context.GetNpgsqlConnection().ExecuteAsync(new CommandDefinition(
            $"INSERT INTO {_table} (order_id, amount, applied) VALUES (@id, @amount, 1) ON CONFLICT (order_id) DO UPDATE SET amount = {_table}.amount + excluded.amount, applied = {_table}.applied + 1",
            new { id = context.Key, amount = order.Amount }, context.GetNpgsqlTransaction(), cancellationToken: cancellationToken));
    }

    public async Task<(long Orders, long Applications, long Total)> ReadAsync(CancellationToken cancellationToken)
    {
        await using var connection = await _dataSource.OpenConnectionAsync(cancellationToken);
        var row = await connection.QuerySingleAsync<(long, long, long)>($"SELECT count(*), coalesce(sum(applied), 0), coalesce(sum(amount), 0) FROM {_table}");
        return row;
    }

    public async ValueTask DisposeAsync()
    {
        // Each run has its own tables; they go away with it.
        try
        {
            await using var connection = await _dataSource.OpenConnectionAsync();
            await connection.ExecuteAsync($"DROP TABLE IF EXISTS {_table}, {_table[..^"_orders".Length]}_processed, {_table[..^"_orders".Length]}_outbox");
        }
        catch (NpgsqlException)
        {
        }

        await _dataSource.DisposeAsync();
    }

    private sealed record Order(int Amount);
}
