using System.Text;
using Dapper;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;

namespace Idempotency.Postgres.Tests;

public sealed class PostgresOutageTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Store_down_reports_store_unavailable_never_a_failure_and_recovers_with_exact_counts()
    {
        await using var proxied = db.ConnectThroughProxy();
        var (proxy, dataSource) = (proxied.Proxy, proxied.DataSource);
        var setup = await db.CreateStoreAsync();
        var store = new PostgresIdempotencyStore(dataSource, setup.Options);
        var table = await db.CreateBusinessTableAsync();
        var options = new IdempotencyOptions { HandlerName = "outage" };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction())), options);
        IncomingMessage Message(int i) => new($"m-{i}", Encoding.UTF8.GetBytes($"{{\"i\":{i}}}"));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message(0), TestContext.Current.CancellationToken)).Outcome);

        proxy.Stop();
        NpgsqlConnection.ClearAllPools();
        Assert.False(await store.PingAsync(TestContext.Current.CancellationToken));
        var during = await processor.ProcessAsync(Message(1), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, during.Outcome);
        Assert.Equal(DeliveryAction.PauseAndRetry, DeliveryPolicy.Decide(during, attempt: options.Retry.MaxAttempts, options).Action);
        var batch = await processor.ProcessBatchAsync([Message(2), Message(3)], TestContext.Current.CancellationToken);
        Assert.All(batch, r => Assert.Equal(ProcessingOutcome.StoreUnavailable, r.Outcome));

        proxy.Start();
        Assert.True(await store.PingAsync(TestContext.Current.CancellationToken));
        foreach (var i in new[] { 1, 2, 3 })
        {
            Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message(i), TestContext.Current.CancellationToken)).Outcome);
        }

        Assert.Equal(4L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(4L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }

    [Fact]
    public async Task Connection_cut_in_the_middle_of_a_handler_is_store_unavailable_and_commits_nothing()
    {
        await using var proxied = db.ConnectThroughProxy();
        var (proxy, dataSource) = (proxied.Proxy, proxied.DataSource);
        var setup = await db.CreateStoreAsync();
        var store = new PostgresIdempotencyStore(dataSource, setup.Options);
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction());
            proxy.Stop();
            await context.GetNpgsqlConnection().ExecuteAsync($"UPDATE {table} SET applied = 2 WHERE id = @id", new { id = context.Key }, context.GetNpgsqlTransaction());
        }), new IdempotencyOptions { HandlerName = "cut" });

        var result = await processor.ProcessAsync(new IncomingMessage("cut-1", "x"u8.ToArray()), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.StoreUnavailable, result.Outcome);
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }
}
