using Idempotency.Health;
using Idempotency.TestSupport;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// The broker can end a subscription without the connection going away: it cancels the consumer when its queue is
/// deleted, and closes a channel on a channel error (404, 406 consumer_timeout). Automatic recovery does neither, so the
/// consumer must resume by itself or stop visibly (Completion faults, health says stopped) - never consume nothing while
/// looking alive.
/// </summary>
public sealed class SubscriptionLossTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task A_deleted_queue_pauses_the_consumer_and_it_consumes_again_once_the_queue_is_declared_again()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "queue-deleted");
        var heartbeat = new ConsumerHealthRegistry().Register("rabbitmq:orders", TimeProvider.System);
        await using var connection = await mq.CreateConnectionAsync("queue-deleted");
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, h.Processor(h.Credit()), h.Options(), cancellationToken: TestContext.Current.CancellationToken);
        consumer.Health = heartbeat;
        await consumer.StartAsync(TestContext.Current.CancellationToken);
        await mq.PublishAsync(h.Queue, "before", Harness.Body("before"));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 1, 30, "the first message processed");

        await mq.Channel.QueueDeleteAsync(h.Queue, ifUnused: false, ifEmpty: false, cancellationToken: TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(
            () => heartbeat.State == ConsumerState.Paused && heartbeat.Detail?.Contains("cancelled the subscription", StringComparison.Ordinal) == true,
            30,
            "health reports the cancelled subscription");

        await RabbitMqTopology.DeclareAsync(mq.Channel, h.Queue, cancellationToken: TestContext.Current.CancellationToken);
        await mq.PublishAsync(h.Queue, "after", Harness.Body("after"));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 2, 90, "the message published after the queue came back processed");
        await Harness.WaitUntilAsync(() => heartbeat.State == ConsumerState.Running, 30, "health reports running again");

        Assert.Equal(1u, await mq.ConsumerCountAsync(h.Queue));
        Assert.False(consumer.Completion.IsCompleted);
        await consumer.StopAsync(TestContext.Current.CancellationToken);
        await consumer.Completion;
    }

    [Fact]
    public async Task A_deleted_queue_under_a_callers_channel_stops_the_consumer_with_a_faulted_completion()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "queue-deleted-own");
        var heartbeat = new ConsumerHealthRegistry().Register("rabbitmq:orders", TimeProvider.System);
        await using var connection = await mq.CreateConnectionAsync("queue-deleted-own");
        await using var channel = await connection.CreateChannelAsync(cancellationToken: TestContext.Current.CancellationToken);
        await using var consumer = new IdempotentRabbitMqConsumer(channel, h.Processor(h.Credit()), h.Options()) { Health = heartbeat };
        await consumer.StartAsync(TestContext.Current.CancellationToken);

        await mq.Channel.QueueDeleteAsync(h.Queue, ifUnused: false, ifEmpty: false, cancellationToken: TestContext.Current.CancellationToken);

        var failure = await Assert.ThrowsAsync<InvalidOperationException>(() => consumer.Completion.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken));
        Assert.Contains("cancelled the subscription", failure.Message, StringComparison.Ordinal);
        Assert.Equal(ConsumerState.Stopped, heartbeat.State);
        Assert.Contains("cancelled the subscription", heartbeat.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_channel_the_broker_closed_stops_the_consumer_with_a_faulted_completion_and_the_message_stays_queued()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "channel-error");
        var heartbeat = new ConsumerHealthRegistry().Register("rabbitmq:orders", TimeProvider.System);
        await using var connection = await mq.CreateConnectionAsync("channel-error");
        var channel = await connection.CreateChannelAsync(cancellationToken: TestContext.Current.CancellationToken);
        await using var consumer = new IdempotentRabbitMqConsumer(channel, h.Processor(h.Credit()), h.Options()) { Health = heartbeat };
        await consumer.StartAsync(TestContext.Current.CancellationToken);
        await mq.PublishAsync(h.Queue, "before", Harness.Body("before"));
        // Acknowledged too: a delivery still unacknowledged when the channel closes goes back to the queue (its row
        // committed), which is correct but not what this test counts.
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 1 && consumer.AcknowledgedCount == 1, 30, "the first message processed and acknowledged");

        // A channel error on the consuming channel: the broker closes that channel (404), the connection stays up.
        await Assert.ThrowsAnyAsync<OperationInterruptedException>(() => channel.QueueDeclarePassiveAsync(h.Queue + ".no-such-queue", TestContext.Current.CancellationToken));

        var failure = await Assert.ThrowsAsync<InvalidOperationException>(() => consumer.Completion.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken));
        Assert.Contains("404", failure.Message, StringComparison.Ordinal);
        Assert.Equal(ConsumerState.Stopped, heartbeat.State);
        Assert.Contains("404", heartbeat.Detail, StringComparison.Ordinal);

        // Nothing was taken meanwhile: a message published now waits in the queue for a new consumer.
        await mq.PublishAsync(h.Queue, "after", Harness.Body("after"));
        Assert.Equal(1u, await h.ReadyAsync());
        Assert.Equal(1L, await h.RowsAsync());
    }
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_connection_loss_is_not_a_cancelled_subscription_recovery_resumes_one_consumer_with_running_health(bool consumerOwnsItsChannel)
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "connection-loss");
        var heartbeat = new ConsumerHealthRegistry().Register("rabbitmq:orders", TimeProvider.System);
        await using var proxy = new TcpProxy(mq.Uri.Host, mq.Uri.Port);
        await using var connection = await mq.CreateConnectionAsync("connection-loss", proxy.Port);
        await using var channel = consumerOwnsItsChannel ? null : await connection.CreateChannelAsync(cancellationToken: TestContext.Current.CancellationToken);
        await using var consumer = channel is null
            ? await IdempotentRabbitMqConsumer.CreateAsync(connection, h.Processor(h.Credit()), h.Options(), cancellationToken: TestContext.Current.CancellationToken)
            : new IdempotentRabbitMqConsumer(channel, h.Processor(h.Credit()), h.Options());
        consumer.Health = heartbeat;
        await consumer.StartAsync(TestContext.Current.CancellationToken);
        await mq.PublishAsync(h.Queue, "before", Harness.Body("before"));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 1, 30, "the first message processed");

        await CutConnectionAsync(proxy, connection);

        await PublishAndWaitAsync(h, 10, expectedRows: 11);
        Assert.Equal(1u, await mq.ConsumerCountAsync(h.Queue));
        Assert.False(consumer.Completion.IsCompleted);
        Assert.Equal(ConsumerState.Running, heartbeat.State);
        await consumer.StopAsync(TestContext.Current.CancellationToken);
        await consumer.Completion;
        Assert.Equal(0u, await mq.ConsumerCountAsync(h.Queue));
    }

    [Fact]
    public async Task A_connection_loss_after_subscribing_again_to_a_recreated_queue_leaves_one_consumer()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "resubscribed-loss");
        var heartbeat = new ConsumerHealthRegistry().Register("rabbitmq:orders", TimeProvider.System);
        await using var proxy = new TcpProxy(mq.Uri.Host, mq.Uri.Port);
        await using var connection = await mq.CreateConnectionAsync("resubscribed-loss", proxy.Port);
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, h.Processor(h.Credit()), h.Options(), cancellationToken: TestContext.Current.CancellationToken);
        consumer.Health = heartbeat;
        await consumer.StartAsync(TestContext.Current.CancellationToken);
        await mq.Channel.QueueDeleteAsync(h.Queue, ifUnused: false, ifEmpty: false, cancellationToken: TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(() => heartbeat.State == ConsumerState.Paused, 30, "health reports the cancelled subscription");
        await RabbitMqTopology.DeclareAsync(mq.Channel, h.Queue, cancellationToken: TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(() => heartbeat.State == ConsumerState.Running, 90, "subscribed again");

        // Recovery re-registers every consumer the client recorded: the cancelled one must not come back beside the new one.
        await CutConnectionAsync(proxy, connection);

        await PublishAndWaitAsync(h, 10, expectedRows: 10);
        Assert.Equal(1u, await mq.ConsumerCountAsync(h.Queue));
        Assert.Equal(10, h.Runs);
        await consumer.StopAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0u, await mq.ConsumerCountAsync(h.Queue));
    }

    private static async Task CutConnectionAsync(TcpProxy proxy, IConnection connection)
    {
        proxy.Stop();
        await Harness.WaitUntilAsync(() => !connection.IsOpen, 30, "the connection lost");
        proxy.Start();
        await Harness.WaitUntilAsync(() => connection.IsOpen, 60, "the connection recovered");
    }

    private async Task PublishAndWaitAsync(Harness h, int count, long expectedRows)
    {
        // Published after the recovery; the consumer's own recovery (channel, then consumer) may still be under way.
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, count).Select(i => ((string?)$"after-{i}", Harness.Body($"after-{i}"))).ToList());
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == expectedRows && await h.ReadyAsync() == 0, 90, $"{count} messages processed after the recovery");
    }
}
