using System.Text.Json;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using Xunit;

/// <summary>The handler through every way a broker delivers twice, against the real store: each order stored once.</summary>
public sealed class OrderPlacedHandlerTests
{
    [Fact]
    public async Task Every_redelivery_stores_an_order_exactly_once()
    {
        var ct = TestContext.Current.CancellationToken;
        var connectionString = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES")
            ?? throw new InvalidOperationException("IDEMPOTENCY_POSTGRES is not set: start PostgreSQL with scripts/services.sh up and eval \"$(scripts/services.sh env)\".");
        var schema = Environment.GetEnvironmentVariable("NEWCOMER_TEST_SCHEMA") ?? "newcomer_tests";
        var run = Guid.NewGuid().ToString("N")[..8];
        await using var db = NpgsqlDataSource.Create(connectionString);
        await db.CreateCommand($"CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {schema}.orders (id text PRIMARY KEY, total numeric NOT NULL, applied int NOT NULL DEFAULT 1)").ExecuteNonQueryAsync(ct);
        var store = new PostgresIdempotencyStore(db, new PostgresIdempotencyStoreOptions { Schema = schema });
        await store.EnsureSchemaAsync(ct);
        var configuration = new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["Idempotency:Postgres:Schema"] = schema })
            .Build();
        var handler = new OrderPlacedHandler(configuration, NullLogger<OrderPlacedHandler>.Instance);

        var report = await new RedeliveryScenarioRunner(
            store,
            handler,
            key => new IncomingMessage(key, JsonSerializer.SerializeToUtf8Bytes(new OrderPlaced($"{run}-{key}", 10m), JsonSerializerOptions.Web)),
            async (key, token) =>
            {
                await using var count = db.CreateCommand($"SELECT coalesce(max(applied), 0) FROM {schema}.orders WHERE id = $1");
                count.Parameters.AddWithValue($"{run}-{key}");
                return Convert.ToInt32(await count.ExecuteScalarAsync(token), System.Globalization.CultureInfo.InvariantCulture);
            })
        {
            Options = new IdempotencyOptions { HandlerName = $"orders-test-{run}" },
        }.RunAsync(ct);

        report.AssertExactlyOnce();
        Assert.True(report.Passed, report.ToString());
    }
}
