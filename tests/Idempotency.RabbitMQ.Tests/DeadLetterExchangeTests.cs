using System.Text;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// A dead-letter exchange that does not exist (misconfigured, or deleted while consuming) must never turn a dead-letter
/// into a discard: start-up refuses it, and at run time the delivery stays in the queue until the exchange takes it.
/// </summary>
public sealed class DeadLetterExchangeTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Start_refuses_a_dead_letter_exchange_that_does_not_exist_and_does_not_subscribe()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "dlx-missing");
        var options = h.Options();
        options.DeadLetterExchange = h.Queue + ".no-such-exchange";
        await using var connection = await mq.CreateConnectionAsync("dlx-missing");
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, h.Processor(h.Credit()), options, cancellationToken: TestContext.Current.CancellationToken);

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => consumer.StartAsync(TestContext.Current.CancellationToken));

        Assert.Contains("DeadLetterExchange", error.Message, StringComparison.Ordinal);
        Assert.Contains(options.DeadLetterExchange, error.Message, StringComparison.Ordinal);
        Assert.Equal(0u, await mq.ConsumerCountAsync(h.Queue));
    }

    [Fact]
    public async Task A_dead_letter_the_exchange_refuses_stays_in_the_queue_and_goes_out_with_its_reasons_once_the_exchange_is_back()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "dlx-gone");
        await using var connection = await mq.CreateConnectionAsync("dlx-gone");
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit()), h.Options());

        // The exchange goes away while consuming; the work queue's own x-dead-letter-exchange is that same exchange, so a
        // basic.nack(requeue: false) would drop the message.
        await mq.Channel.ExchangeDeleteAsync(h.Topology.DeadLetterExchange, ifUnused: false, cancellationToken: TestContext.Current.CancellationToken);
        await mq.PublishAsync(h.Queue, messageId: null, Harness.Body("no-key"));

        await Harness.WaitUntilAsync(() => consumer.RequeuedCount >= 3 || consumer.DeadLetteredCount > 0, 60, "the refused dead-letter returned to the queue three times");
        Assert.Equal(0, consumer.DeadLetteredCount);

        // The exchange is back: the next try (on a new dead-letter channel, the 404 closed the old one) carries the reasons.
        await mq.Channel.ExchangeDeclareAsync(h.Topology.DeadLetterExchange, ExchangeType.Direct, durable: true, autoDelete: false, arguments: null, cancellationToken: TestContext.Current.CancellationToken);
        await mq.Channel.QueueBindAsync(h.Topology.DeadLetterQueue, h.Topology.DeadLetterExchange, h.Topology.DeadLetterRoutingKey, arguments: null, cancellationToken: TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(async () => await h.DeadLetteredAsync() == 1, 60, "the message in the dead-letter queue");
        await Harness.WaitUntilAsync(() => consumer.DeadLetteredCount == 1, 30, "the consumer counts one dead-letter");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        var dead = Assert.Single(await mq.DrainAsync(h.Topology.DeadLetterQueue));
        Assert.Equal(DeliveryPolicy.InvalidKey, Header(dead, DeadLetterHeaders.ReasonCode));
        Assert.Equal(h.Queue, Header(dead, RabbitMqDeadLetterHeaders.SourceQueue));
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0, h.Runs);
    }

    internal static string? Header(BasicGetResult message, string name) =>
        message.BasicProperties.Headers?.TryGetValue(name, out var value) == true
            ? value switch { byte[] bytes => Encoding.UTF8.GetString(bytes), null => null, _ => value.ToString() }
            : null;
}
