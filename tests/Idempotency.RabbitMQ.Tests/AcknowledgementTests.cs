using Idempotency.TestSupport;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// A worker's committed batch is acknowledged with one <c>basic.ack(multiple: true)</c> when every lower delivery of the
/// channel is settled; a multiple ack never covers a delivery this consumer did not commit or did not receive, and no
/// delivery is acknowledged twice (the broker would close the channel and redeliver the rest).
/// </summary>
public sealed class AcknowledgementTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task With_default_options_committed_batches_go_out_in_few_ack_frames()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "acks-default");
        const int Messages = 300;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"d-{i:D3}", Harness.Body($"d-{i:D3}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("acks-default");

        // Default options: one worker, prefetch 100, natural batching; its batches commit in delivery order.
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit()), h.Topology.ApplyTo(new RabbitMqIdempotencyOptions()));
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == Messages, 90, "every delivery acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(Messages, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.True(consumer.AckFrames <= Messages / 3, $"{consumer.AckFrames} ack frames for {Messages} acknowledged deliveries");
    }

    [Fact]
    public async Task With_concurrent_workers_and_a_failing_delivery_every_delivery_is_acknowledged_exactly_once()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "acks");
        const int Messages = 300;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"a-{i:D3}", Harness.Body($"a-{i:D3}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("acks");

        var options = h.Options(concurrency: 4, prefetch: 200, batchSize: 100);
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit(fail: context => context.Key == "a-150"), Harness.HandlerOptions(maxAttempts: 2)), options);
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == Messages - 1 && await h.DeadLetteredAsync() == 1 && await h.ReadyAsync() == 0, 90, "all applied, the failing one dead-lettered");
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == Messages - 1, 30, "every committed delivery acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        // Nothing went back to the queue when the channel closed: every delivery was settled, none twice (a second ack of a
        // tag would have closed the channel with PRECONDITION_FAILED and redelivered the rest).
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(Messages - 1L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        // Batches that commit before a lower one still in flight are acked one by one, never held back.
        Assert.True(consumer.AckFrames < Messages - 1, $"{consumer.AckFrames} ack frames for {Messages - 1} acknowledged deliveries");
    }

    [Fact]
    public async Task On_a_channel_holding_an_earlier_unacknowledged_delivery_acks_go_one_by_one_and_leave_it_alone()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "acks-shared");
        var other = await RabbitMqTopology.DeclareAsync(mq.Channel, mq.NewQueueName("acks-other"), RabbitMqQueueType.Classic, cancellationToken: TestContext.Current.CancellationToken);
        await mq.PublishAsync(other.Queue, "foreign", Harness.Body("foreign"));
        const int Messages = 50;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"b-{i:D2}", Harness.Body($"b-{i:D2}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("acks-shared");

        // The caller's channel already holds delivery tag 1 of another queue, unacknowledged.
        var channel = await connection.CreateChannelAsync(cancellationToken: TestContext.Current.CancellationToken);
        var foreign = await channel.BasicGetAsync(other.Queue, autoAck: false, TestContext.Current.CancellationToken);
        Assert.NotNull(foreign);
        await using (var consumer = new IdempotentRabbitMqConsumer(channel, h.Processor(h.Credit()), h.Options(prefetch: 100, batchSize: 100)))
        {
            await consumer.StartAsync(TestContext.Current.CancellationToken);
            await Harness.WaitUntilAsync(async () => await h.RowsAsync() == Messages && consumer.AcknowledgedCount == Messages, 60, "all applied and acknowledged");
            await consumer.StopAsync(TestContext.Current.CancellationToken);
        }

        // The foreign delivery is still unacknowledged: closing the channel returns it to its queue.
        await channel.CloseAsync(TestContext.Current.CancellationToken);
        await channel.DisposeAsync();
        await Harness.WaitUntilAsync(async () => await mq.ReadyCountAsync(other.Queue) == 1, 30, "the foreign delivery back in its queue");
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(Messages, await h.AppliedAsync());
    }
}
