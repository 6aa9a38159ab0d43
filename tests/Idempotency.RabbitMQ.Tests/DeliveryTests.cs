using Idempotency.TestSupport;

namespace Idempotency.RabbitMQ.Tests;

public sealed class DeliveryTests(PostgresFixture db, RabbitMqFixture mq, RedisFixture redis) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>, IClassFixture<RedisFixture>
{
    /// <summary>Both queue types over PostgreSQL; Redis on a classic queue (the queue type does not change what the store does).</summary>
    public static TheoryData<RabbitMqQueueType, StoreKind> QueuesAndStores => new()
    {
        { RabbitMqQueueType.Classic, StoreKind.Postgres },
        { RabbitMqQueueType.Quorum, StoreKind.Postgres },
        { RabbitMqQueueType.Classic, StoreKind.Redis },
    };

    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Message_published_twice_has_one_effect_and_both_deliveries_are_acked(StoreKind kind)
    {
        var h = await Harness.CreateAsync(db, mq);
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        await mq.PublishAsync(h.Queue, "order-1", Harness.Body("order-1"));
        await mq.PublishAsync(h.Queue, "order-1", Harness.Body("order-1"));
        await using var connection = await mq.CreateConnectionAsync("twice");
        var consumer = await h.StartAsync(connection, new IdempotentProcessor(store.Store, store.Handler(), Harness.HandlerOptions()), h.Options());

        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 2, 20, "both deliveries acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(1, store.Runs);
        Assert.Equal(new EffectCounts(1, 1, 1), await store.ReadAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }

    [Theory]
    [MemberData(nameof(QueuesAndStores))]
    public async Task Ten_thousand_messages_with_20_percent_duplicates_and_4_workers_apply_each_key_once(RabbitMqQueueType type, StoreKind kind)
    {
        var h = await Harness.CreateAsync(db, mq, type);
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        const int unique = 8_000;
        var messages = Enumerable.Range(0, unique).Select(i => $"k-{i}")
            .Concat(Enumerable.Range(0, 2_000).Select(i => $"k-{i * 4}"))
            .OrderBy(_ => Random.Shared.Next())
            .Select(key => ((string?)key, Harness.Body(key)))
            .ToList();
        await mq.PublishManyAsync(h.Queue, messages);
        await using var connection = await mq.CreateConnectionAsync("ten-thousand");
        var consumer = await h.StartAsync(connection, new IdempotentProcessor(store.Store, store.Handler(), Harness.HandlerOptions()), h.Options(concurrency: 4, prefetch: 100));

        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount >= 10_000, 90, "10,000 deliveries acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(10_000L, consumer.AcknowledgedCount);
        Assert.Equal(unique, store.Runs);
        Assert.Equal(new EffectCounts(unique, unique, 1), await store.ReadAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }

    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Batch_mode_with_duplicates_applies_each_key_once_and_acks_every_delivery(StoreKind kind)
    {
        var h = await Harness.CreateAsync(db, mq);
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        const int unique = 2_000;
        var messages = Enumerable.Range(0, unique).Select(i => $"b-{i}")
            .Concat(Enumerable.Range(0, 500).Select(i => $"b-{i * 3}"))
            .OrderBy(_ => Random.Shared.Next())
            .Select(key => ((string?)key, Harness.Body(key)))
            .ToList();
        await mq.PublishManyAsync(h.Queue, messages);
        await using var connection = await mq.CreateConnectionAsync("batch");
        var consumer = await h.StartAsync(connection, new IdempotentProcessor(store.Store, store.Handler(), Harness.HandlerOptions()), h.Options(concurrency: 2, prefetch: 200, batchSize: 50));

        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount >= 2_500, 60, "2,500 deliveries acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(new EffectCounts(unique, unique, 1), await store.ReadAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }

    [Fact]
    public async Task Key_from_a_header_or_a_selector_replaces_the_message_id()
    {
        var h = await Harness.CreateAsync(db, mq);
        // Same header key under different message ids -> one effect; the message id is ignored.
        await mq.PublishAsync(h.Queue, "id-1", Harness.Body("h"), new Dictionary<string, object?> { ["x-order-id"] = "order-42" });
        await mq.PublishAsync(h.Queue, "id-2", Harness.Body("h"), new Dictionary<string, object?> { ["x-order-id"] = "order-42" });
        await mq.PublishAsync(h.Queue, "id-3", Harness.Body("h"), new Dictionary<string, object?> { ["x-order-id"] = "order-43" });
        await using var connection = await mq.CreateConnectionAsync("key-header");
        var options = h.Options();
        options.KeyHeader = "x-order-id";
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit()), options);
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 3, 20, "three deliveries acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(2L, await h.RowsAsync());
        Assert.Equal(1L, await h.Db.ScalarAsync<long>($"SELECT applied FROM {h.Table} WHERE id = 'order-42'"));

        // A selector: the routing key plus the message id.
        await mq.PublishAsync(h.Queue, "id-1", Harness.Body("s"));
        options = h.Options();
        options.KeySelector = args => $"{args.RoutingKey}/{args.BasicProperties.MessageId}";
        consumer = await h.StartAsync(connection, h.Processor(h.Credit()), options);
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 1, 20, "the selector-keyed delivery acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(1L, await h.Db.ScalarAsync<long>($"SELECT count(*) FROM {h.Table} WHERE id = @id", new { id = $"{h.Queue}/id-1" }));
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }
}
