using Idempotency.TestSupport;

namespace Idempotency.RabbitMQ.Tests;

public sealed class RecoveryTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Connection_lost_after_commit_before_ack_redelivery_is_a_duplicate_with_no_second_effect()
    {
        var h = await Harness.CreateAsync(db, mq);
        const int total = 20;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, total).Select(i => ((string?)$"r-{i}", Harness.Body($"r-{i}"))));
        await using var proxy = new TcpProxy(mq.Uri.Host, mq.Uri.Port);
        await using var connection = await mq.CreateConnectionAsync("lost-ack", proxy.Port);

        // The 5th handler cuts the broker connection after its writes: the store commit still happens (PostgreSQL is
        // reached directly), the ack that follows cannot reach the broker, and the broker requeues the delivery.
        var cutOn = -1;
        var handler = h.Credit(afterWrite: context =>
        {
            if (h.Runs == 5 && Interlocked.CompareExchange(ref cutOn, 0, -1) == -1)
            {
                proxy.Stop();
            }
        });
        var consumer = await h.StartAsync(connection, h.Processor(handler), h.Options(concurrency: 1, prefetch: 1));

        await Harness.WaitUntilAsync(() => !proxy.IsRunning, 20, "the connection cut after the 5th commit");
        await Task.Delay(600, TestContext.Current.CancellationToken);
        Assert.Equal(5, h.Runs);
        Assert.Equal(5L, await h.RowsAsync());
        proxy.Start();

        await Harness.WaitUntilAsync(async () => consumer.RedeliveredCount >= 1 && await h.RowsAsync() == total && await h.ReadyAsync() == 0 && consumer.PendingCount == 0, 40, "recovery, the redelivery and the rest processed");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(total, h.Runs);
        Assert.Equal(total, await h.RowsAsync());
        Assert.Equal(total, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.True(consumer.RedeliveredCount >= 1);
    }

    [Fact]
    public async Task Consumer_process_killed_mid_stream_then_restarted_loses_nothing_and_applies_each_key_once()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "kill");
        const int total = 1_500;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, total).Select(i => ((string?)$"x-{i}", Harness.Body($"x-{i}"))));

        using (var first = StartHost(h))
        {
            await Harness.WaitUntilAsync(async () => await h.RowsAsync() >= 300, 60, "300 rows before the kill");
            first.Kill();
        }

        var rowsAtKill = await h.RowsAsync();
        Assert.True(rowsAtKill < total, $"the kill came too late to be mid-stream ({rowsAtKill} rows)");

        using (var second = StartHost(h))
        {
            await Harness.WaitUntilAsync(async () => await h.RowsAsync() == total, 90, $"{total} rows after the restart");
            second.Kill();
        }

        // Whatever the killed processes committed but had not acked comes back now: all of it must be duplicates.
        await using var connection = await mq.CreateConnectionAsync("kill-drain");
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit(), Harness.HandlerOptions("testhost")), h.Options(concurrency: 2));
        await Harness.WaitUntilAsync(async () => await h.ReadyAsync() == 0 && consumer.PendingCount == 0, 30, "the queue drained and every delivery settled");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(0, h.Runs);
        Assert.Equal(total, await h.RowsAsync());
        Assert.Equal(total, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }

    private ChildHost StartHost(Harness h) => ChildHost.Start(
        "Idempotency.RabbitMQ.Tests",
        "Idempotency.RabbitMQ.TestHost",
        [mq.Uri.ToString(), h.Queue, db.ConnectionString, db.Schema, h.Store.Options.Table, h.Table, "4", "1", h.Store.Options.OutboxTable]);
}
