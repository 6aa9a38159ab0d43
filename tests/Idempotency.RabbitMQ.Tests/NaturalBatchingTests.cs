using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// The default consumer batches naturally: deliveries already waiting in the prefetch buffer share one store
/// transaction, through the ordinary per-message handler, in delivery order; a failing one is isolated.
/// </summary>
public sealed class NaturalBatchingTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    private static RabbitMqIdempotencyOptions Defaults(Harness h) =>
        h.Topology.ApplyTo(new RabbitMqIdempotencyOptions { ShutdownTimeout = TimeSpan.FromSeconds(20) });

    /// <summary>Logs each applied key with its transaction id, in the handler's transaction: the log's order is the commit order of one worker.</summary>
    private static async Task<(string Log, IIdempotentMessageHandler Handler)> LoggingHandlerAsync(PostgresFixture db, Harness h, Func<MessageContext, bool>? fail = null, TimeSpan? pause = null)
    {
        var log = $"{db.Schema}.log_{Guid.NewGuid():N}"[..40];
        await using (var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
        {
            await connection.ExecuteAsync($"CREATE TABLE {log} (seq bigserial PRIMARY KEY, id text NOT NULL, tx bigint NOT NULL)");
        }

        var credit = h.Credit(fail: fail);
        return (log, IdempotentHandler.Create(async (context, ct) =>
        {
            if (pause is { } delay)
            {
                await Task.Delay(delay, ct);
            }

            await credit.HandleAsync(context, ct);
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {log} (id, tx) VALUES (@id, txid_current())", new { id = context.Key }, context.GetNpgsqlTransaction());
        }));
    }

    [Fact]
    public async Task Waiting_deliveries_share_transactions_a_failing_one_is_isolated_and_order_holds()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "natural");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 60).Select(i => ((string?)$"n-{i:D2}", Harness.Body($"n-{i:D2}"))).ToList());
        var (log, handler) = await LoggingHandlerAsync(db, h, fail: context => context.Key == "n-30");
        await using var connection = await mq.CreateConnectionAsync("natural");

        var consumer = await h.StartAsync(connection, h.Processor(handler, Harness.HandlerOptions(maxAttempts: 2)), Defaults(h));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 59 && await h.DeadLetteredAsync() == 1, 60, "59 applied, the failing one dead-lettered");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(59L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        var applied = (await db.DataSource.OpenConnection().QueryAsync<(string Id, long Tx)>($"SELECT id, tx FROM {log} ORDER BY seq")).ToList();
        Assert.Equal(59, applied.Count);

        // One worker, one lane: the keys commit in delivery order (the failed one retried after the others is dead-lettered).
        Assert.Equal(applied.Select(a => a.Id).Order(StringComparer.Ordinal), applied.Select(a => a.Id));

        // The waiting deliveries were batched: far fewer transactions than messages.
        Assert.True(applied.Select(a => a.Tx).Distinct().Count() <= 10, $"{applied.Select(a => a.Tx).Distinct().Count()} transactions for 59 messages");
    }

    [Fact]
    public async Task A_stop_in_the_middle_of_a_batch_loses_nothing_and_a_restart_applies_each_once()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "natural-stop");
        // 400 deliveries at 20 ms each: a batch of up to 100 (the prefetch) takes 2 s, so a stop after the first commit lands
        // with most of the queue still waiting, on a quiet machine as on a loaded one.
        const int Messages = 400;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"s-{i:D3}", Harness.Body($"s-{i:D3}"))).ToList());
        var (_, handler) = await LoggingHandlerAsync(db, h, pause: TimeSpan.FromMilliseconds(20));
        await using var connection = await mq.CreateConnectionAsync("natural-stop");

        var first = await h.StartAsync(connection, h.Processor(handler), Defaults(h));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() >= 20, 60, "the first batches committed");
        await first.StopAsync(TestContext.Current.CancellationToken);

        // Everything acknowledged has its effect, and nothing without one was acknowledged.
        var rows = await h.RowsAsync();
        await Harness.WaitUntilAsync(async () => await h.ReadyAsync() + rows >= Messages, 30, "unacknowledged deliveries back in the queue");
        Assert.True(first.AcknowledgedCount <= rows, $"acknowledged {first.AcknowledgedCount} with {rows} effects");
        Assert.True(rows < Messages, "the stop came too late to test anything");

        var second = await h.StartAsync(connection, h.Processor(handler), Defaults(h));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == Messages && await h.ReadyAsync() == 0, 90, "all applied after the restart");
        await second.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(Messages, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }
}
