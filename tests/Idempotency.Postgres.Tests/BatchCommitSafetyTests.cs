using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.Storage;
using Idempotency.TestSupport;
using Npgsql;

namespace Idempotency.Postgres.Tests;

/// <summary>What a batch may report as committed, and which consumer position it may record.</summary>
public sealed class BatchCommitSafetyTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static IncomingMessage Message(string key, long? offset = null, string group = "group") =>
        new(key, Encoding.UTF8.GetBytes($"{{\"k\":\"{key}\"}}"))
        {
            Destination = "orders",
            Position = offset is { } o ? new ConsumerPosition(group, "orders", 0, o) : null,
        };

    [Fact]
    public async Task Batch_whose_handler_swallows_a_database_error_reports_committed_only_what_committed()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await using (var connection = await db.DataSource.OpenConnectionAsync(Ct))
        {
            await connection.ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES ('taken', 1)");
        }

        // "b" inserts a row that exists and carries on after the error, as handlers that treat "already there" as
        // success do: its transaction is aborted without the handler throwing, and PostgreSQL answers a bare COMMIT
        // with ROLLBACK. Nothing may be reported committed that did not commit.
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            try
            {
                await context.GetNpgsqlConnection().ExecuteAsync(
                    $"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key == "b" ? "taken" : context.Key }, context.GetNpgsqlTransaction());
            }
            catch (PostgresException e) when (e.SqlState == PostgresErrorCodes.UniqueViolation)
            {
            }
        }), new IdempotencyOptions { HandlerName = "swallow" });

        var results = await processor.ProcessBatchAsync([Message("a"), Message("b"), Message("c")], Ct);

        Assert.False(results[1].IsCommitted);
        foreach (var result in results)
        {
            var key = result.Message.Key!;
            var row = await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = @key", new { key });
            var recorded = await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = @key", new { key });
            Assert.True(result.IsCommitted == (row == 1 && recorded == 1), $"{key}: {result.Outcome}, business row {row}, key row {recorded}");
        }

        Assert.Contains(results, r => r.Outcome == ProcessingOutcome.Processed);
    }

    [Theory]
    [InlineData(ClaimTiming.BeforeHandler)]
    [InlineData(ClaimTiming.AtCommit)]
    public async Task Batch_records_no_consumer_position_past_a_message_that_did_not_settle(ClaimTiming timing)
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            if (context.Key == "p-2")
            {
                throw new InvalidOperationException("poison");
            }

            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction());
        }), new IdempotencyOptions { HandlerName = "positions", ClaimTiming = timing });

        var group = "group-" + timing;
        var results = await processor.ProcessBatchAsync([.. Enumerable.Range(0, 6).Select(i => Message($"p-{i}", offset: i, group))], Ct);

        // Offsets 3..5 committed, but offset 2 is still to be retried or dead-lettered: the position must stay at 1, or a
        // restart that seeks past the stored position would never see offset 2 again.
        Assert.Equal(ProcessingOutcome.Failed, results[2].Outcome);
        Assert.Equal(5L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        var stored = await store.LoadPositionsAsync(group, "orders", [0], Ct);
        Assert.Equal(1L, stored[0]);

        // Once offset 2 commits (a retry), positions may move on.
        var retried = await new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction())),
            new IdempotencyOptions { HandlerName = "positions", ClaimTiming = timing }).ProcessAsync(Message("p-2", offset: 2, group), Ct);
        Assert.Equal(ProcessingOutcome.Processed, retried.Outcome);
        Assert.Equal(2L, (await store.LoadPositionsAsync(group, "orders", [0], Ct))[0]);
    }
}
