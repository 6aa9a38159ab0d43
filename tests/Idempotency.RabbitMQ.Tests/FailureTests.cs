using System.Text;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Tests;

public sealed class FailureTests(PostgresFixture db, RabbitMqFixture mq, RedisFixture redis) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>, IClassFixture<RedisFixture>
{
    private static string? Header(BasicGetResult message, string name) =>
        message.BasicProperties.Headers?.TryGetValue(name, out var value) == true
            ? value switch { byte[] bytes => Encoding.UTF8.GetString(bytes), null => null, _ => value.ToString() }
            : null;

    [Theory]
    [MemberData(nameof(DeliveryTests.QueuesAndStores), MemberType = typeof(DeliveryTests))]
    public async Task Poison_message_lands_in_the_dlq_after_max_attempts_with_reason_headers_and_the_rest_is_processed(RabbitMqQueueType type, StoreKind kind)
    {
        var h = await Harness.CreateAsync(db, mq, type);
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        var poisonRuns = 0;
        var messages = Enumerable.Range(0, 50).Select(i => i == 20 ? "poison" : $"p-{i}").Select(k => ((string?)k, Harness.Body(k))).ToList();
        messages.Add((null, Harness.Body("no-key")));
        await mq.PublishManyAsync(h.Queue, messages);
        await using var connection = await mq.CreateConnectionAsync("poison");
        var handler = store.Handler(fail: context =>
        {
            if (context.Key == "poison")
            {
                Interlocked.Increment(ref poisonRuns);
                return true;
            }

            return false;
        });
        var consumer = await h.StartAsync(connection, new IdempotentProcessor(store.Store, handler, Harness.HandlerOptions(maxAttempts: 3)), h.Options(concurrency: 2));

        await Harness.WaitUntilAsync(async () => await h.DeadLetteredAsync() == 2 && consumer.AcknowledgedCount >= 49, 30, "49 acked and 2 dead-lettered");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(3, poisonRuns);
        Assert.Equal(new EffectCounts(49, 49, 1), await store.ReadAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        var dead = await mq.DrainAsync(h.Topology.DeadLetterQueue);
        Assert.Equal(2, dead.Count);

        var poison = Assert.Single(dead, m => m.BasicProperties.MessageId == "poison");
        Assert.Equal(DeliveryPolicy.HandlerFailed, Header(poison, DeadLetterHeaders.ReasonCode));
        Assert.Equal("3", Header(poison, DeadLetterHeaders.Attempts));
        Assert.Equal(typeof(InvalidOperationException).FullName, Header(poison, DeadLetterHeaders.ErrorType));
        Assert.Contains("poison message", Header(poison, DeadLetterHeaders.ErrorMessage), StringComparison.Ordinal);
        Assert.Equal("orders", Header(poison, DeadLetterHeaders.Handler));
        Assert.Equal("poison", Header(poison, DeadLetterHeaders.Key));
        Assert.Equal(h.Queue, Header(poison, RabbitMqDeadLetterHeaders.SourceQueue));
        Assert.Equal(Harness.Body("poison"), poison.Body.ToArray());

        var keyless = Assert.Single(dead, m => m.BasicProperties.MessageId is null);
        Assert.Equal(DeliveryPolicy.InvalidKey, Header(keyless, DeadLetterHeaders.ReasonCode));
        Assert.Equal("1", Header(keyless, DeadLetterHeaders.Attempts));
    }

    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Store_down_for_a_while_pauses_consuming_dead_letters_nothing_and_counts_are_exact_after_recovery(StoreKind kind)
    {
        var h = await Harness.CreateAsync(db, mq);
        await using var store = await EffectStore.CreateAsync(kind, db, redis, throughProxy: true);

        const int total = 400;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, total).Select(i => ((string?)$"s-{i}", Harness.Body($"s-{i}"))));
        await using var connection = await mq.CreateConnectionAsync("store-down");
        var processor = new IdempotentProcessor(store.Store, store.Handler(onRun: _ => Thread.Sleep(2)), Harness.HandlerOptions(maxAttempts: 2));
        var consumer = await h.StartAsync(connection, processor, h.Options(concurrency: 4, prefetch: 20));

        await Harness.WaitUntilAsync(async () => (await store.ReadAsync()).Keys >= 50, 30, "50 effects before the outage");
        store.Cut();
        await Harness.WaitUntilAsync(() => consumer.IsPaused, 15, "the consumer pauses");
        await Harness.WaitUntilAsync(async () => await mq.ConsumerCountAsync(h.Queue) == 0, 15, "the subscription is cancelled while paused");

        // A COMMIT the server had received before the cut still lands (its reply is what got lost); on a starved machine
        // that can be a moment after the pause. Nothing may land after that.
        await Task.Delay(1_000, TestContext.Current.CancellationToken);
        var effectsDuringOutage = await store.ReadAsync();
        await Task.Delay(1_500, TestContext.Current.CancellationToken);
        Assert.True(consumer.IsPaused);
        Assert.Equal(effectsDuringOutage, await store.ReadAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());

        store.Restore();
        await Harness.WaitUntilAsync(async () => (await store.ReadAsync()).Keys == total, 60, $"{total} effects after recovery");
        await Harness.WaitUntilAsync(async () => await h.ReadyAsync() == 0 && consumer.PendingCount == 0, 20, "the queue drained and every delivery settled");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.False(consumer.IsPaused);
        Assert.Equal(0L, consumer.DeadLetteredCount);
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(new EffectCounts(total, total, 1), await store.ReadAsync());
        Assert.Equal(0u, await h.ReadyAsync());
    }
}
