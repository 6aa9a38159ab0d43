using System.Collections.Concurrent;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// What a publisher puts in a message, or a key selector that throws on it, must not stall the consumer: an exception in
/// the delivery callback leaves the delivery unacked for good. With a prefetch of 1 such a delivery blocks the whole queue.
/// </summary>
public sealed class UnreadableDeliveryTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Malformed_delivery_count_and_timestamp_are_ignored_and_every_message_is_processed()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "bad-count");
        await mq.PublishAsync(h.Queue, "text-count", Harness.Body("text-count"), new Dictionary<string, object?> { ["x-delivery-count"] = "abc" });
        await mq.PublishAsync(h.Queue, "huge-count", Harness.Body("huge-count"), new Dictionary<string, object?> { ["x-delivery-count"] = long.MaxValue });
        await mq.PublishAsync(h.Queue, "negative-count", Harness.Body("negative-count"), new Dictionary<string, object?> { ["x-delivery-count"] = -5 });

        // A classic queue never sets x-delivery-count: a publisher's 10 must not count as ten attempts already made.
        await mq.PublishAsync(h.Queue, "publisher-count", Harness.Body("publisher-count"), new Dictionary<string, object?> { ["x-delivery-count"] = 10 });
        await mq.Channel.BasicPublishAsync(string.Empty, h.Queue, mandatory: true, new BasicProperties { MessageId = "huge-timestamp", Persistent = true, Timestamp = new AmqpTimestamp(long.MaxValue) }, Harness.Body("huge-timestamp"), TestContext.Current.CancellationToken);
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 5).Select(i => ((string?)$"plain-{i}", Harness.Body($"plain-{i}"))).ToList());

        // Every message fails once, so each is also read as a redelivery (where x-delivery-count is looked at).
        var failedOnce = new ConcurrentDictionary<string, bool>();
        var handler = h.Credit(fail: context => failedOnce.TryAdd(context.Key!, true));
        await using var connection = await mq.CreateConnectionAsync("bad-count");
        var consumer = await h.StartAsync(connection, h.Processor(handler, Harness.HandlerOptions(maxAttempts: 2)), h.Options(prefetch: 1));

        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 10, 60, "all 10 messages processed");
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 10, 30, "all 10 acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(10L, await h.AppliedAsync());
        Assert.Equal(0, consumer.DeadLetteredCount);
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(0u, await h.ReadyAsync());
    }

    [Fact]
    public async Task A_key_selector_that_throws_dead_letters_that_message_with_the_cause_and_the_rest_is_processed()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "selector-throws");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 10).Select(i => ((string?)(i == 3 ? "boom" : $"k-{i}"), Harness.Body($"k-{i}"))).ToList());
        var options = h.Options(prefetch: 1);
        options.KeySelector = args => args.BasicProperties.MessageId == "boom" ? throw new FormatException("no key in this one") : args.BasicProperties.MessageId;
        await using var connection = await mq.CreateConnectionAsync("selector-throws");
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit()), options);

        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 9 && await h.DeadLetteredAsync() == 1, 60, "9 processed and 1 dead-lettered");
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 9, 30, "9 acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        var dead = Assert.Single(await mq.DrainAsync(h.Topology.DeadLetterQueue));
        Assert.Equal("boom", dead.BasicProperties.MessageId);
        Assert.Equal(DeliveryPolicy.InvalidKey, DeadLetterExchangeTests.Header(dead, DeadLetterHeaders.ReasonCode));
        Assert.Contains("KeySelector threw System.FormatException: no key in this one", DeadLetterExchangeTests.Header(dead, DeadLetterHeaders.ErrorMessage), StringComparison.Ordinal);
        Assert.Equal(0u, await h.ReadyAsync());
    }
}
