using Idempotency.TestSupport;

namespace Idempotency.RabbitMQ.Tests;

public sealed class ShutdownTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Graceful_stop_finishes_in_flight_acks_only_committed_and_loses_nothing()
    {
        var h = await Harness.CreateAsync(db, mq);
        const int total = 300;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, total).Select(i => ((string?)$"g-{i}", Harness.Body($"g-{i}"))));
        await using var connection = await mq.CreateConnectionAsync("graceful");
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit(before: (_, ct) => Task.Delay(20, ct))), h.Options(concurrency: 4, prefetch: 40));

        await Harness.WaitUntilAsync(async () => await h.RowsAsync() >= 40, 30, "40 rows before the stop");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        // Every commit was acked and nothing else was: what is left in the queue is exactly what was not committed.
        var committed = await h.RowsAsync();
        Assert.Equal(committed, consumer.AcknowledgedCount);
        Assert.True(committed < total, "the stop came after everything was processed");
        await Harness.WaitUntilAsync(async () => await h.ReadyAsync() == total - committed, 10, "uncommitted deliveries back in the queue");

        await using var second = await mq.CreateConnectionAsync("graceful-2");
        var rest = await h.StartAsync(second, h.Processor(h.Credit()), h.Options(concurrency: 4, prefetch: 40));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == total, 30, $"{total} rows after the second consumer");
        await rest.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(total - committed, rest.AcknowledgedCount);
        Assert.Equal(total, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }

    [Fact]
    public async Task Stop_timeout_cancels_a_stuck_handler_without_committing_or_acking_it()
    {
        var h = await Harness.CreateAsync(db, mq);
        await mq.PublishAsync(h.Queue, "stuck", Harness.Body("stuck"));
        await using var connection = await mq.CreateConnectionAsync("stuck");
        var entered = new TaskCompletionSource();
        var handler = h.Credit(before: async (_, ct) =>
        {
            entered.TrySetResult();
            await Task.Delay(TimeSpan.FromMinutes(1), ct);
        });
        var options = h.Options();
        options.ShutdownTimeout = TimeSpan.FromMilliseconds(300);
        var consumer = await h.StartAsync(connection, h.Processor(handler), options);
        await entered.Task.WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);

        await consumer.StopAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);

        Assert.Equal(0L, consumer.AcknowledgedCount);
        Assert.Equal(0L, await h.RowsAsync());
        await Harness.WaitUntilAsync(async () => await h.ReadyAsync() == 1, 10, "the stuck delivery back in the queue");
    }
}
