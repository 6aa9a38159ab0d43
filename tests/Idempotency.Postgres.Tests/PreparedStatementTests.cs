using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.Storage;
using Idempotency.TestSupport;
using Npgsql;

namespace Idempotency.Postgres.Tests;

/// <summary>The store prepares its own statements once per physical connection, and can be told not to.</summary>
public sealed class PreparedStatementTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static IncomingMessage Message(string key) => new(key, Encoding.UTF8.GetBytes("{}")) { Destination = "orders" };

    [Theory]
    [InlineData(ClaimTiming.BeforeHandler, true)]
    [InlineData(ClaimTiming.AtCommit, true)]
    [InlineData(ClaimTiming.BeforeHandler, false)]
    public async Task Store_statements_are_prepared_on_the_connection_only_when_enabled(ClaimTiming timing, bool prepare)
    {
        // One physical connection, so every message reuses it and pg_prepared_statements shows what it holds.
        var single = new NpgsqlConnectionStringBuilder(db.ConnectionString) { MaxPoolSize = 1 };
        await using var dataSource = NpgsqlDataSource.Create(single.ConnectionString);
        var table = "prep_" + Guid.NewGuid().ToString("N")[..8];
        var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = table, OutboxTable = table + "_outbox", PrepareStatements = prepare });
        await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "orders", ClaimTiming = timing });

        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message($"p-{i}"), TestContext.Current.CancellationToken)).Outcome);
        }

        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("p-0"), TestContext.Current.CancellationToken)).Outcome);
        var found = await store.FindProcessedBatchAsync(
            [new ClaimRequest("orders", "p-1", default, DateTimeOffset.UtcNow), new ClaimRequest("orders", "none", default, DateTimeOffset.UtcNow)],
            TestContext.Current.CancellationToken);

        Assert.NotNull(found[0]);
        Assert.Null(found[1]);
        await using var connection = await dataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        var prepared = (await connection.QueryAsync<string>("SELECT statement FROM pg_prepared_statements")).ToList();
        var ours = prepared.Where(s => s.Contains(table, StringComparison.Ordinal)).ToList();
        if (!prepare)
        {
            Assert.Empty(ours);
            return;
        }

        // The claim (or the key insert at commit) and the batch look-up, each prepared once however many messages ran.
        Assert.Contains(ours, s => s.Contains(timing == ClaimTiming.AtCommit ? "clock_timestamp(), $5, $6" : "ON CONFLICT DO NOTHING", StringComparison.Ordinal));
        Assert.Contains(ours, s => s.Contains("ANY($2)", StringComparison.Ordinal));
        Assert.Equal(ours.Count, ours.Distinct(StringComparer.Ordinal).Count());
    }
}
