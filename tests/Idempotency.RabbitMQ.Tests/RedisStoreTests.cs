using Idempotency.TestSupport;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>The adapter unchanged over the Redis store (Redis-held state): the same guarantees as over PostgreSQL.</summary>
public sealed class RedisStoreTests(PostgresFixture db, RabbitMqFixture mq, RedisFixture redis) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>, IClassFixture<RedisFixture>
{
    [Theory]
    [InlineData(1)]
    [InlineData(20)]
    public async Task Redis_store_applies_each_key_once_with_duplicates_and_4_workers(int batchSize)
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "redis");
        var effects = new RedisEffects(redis);
        const int unique = 1_000;
        var messages = Enumerable.Range(0, unique).Select(i => $"r-{i}")
            .Concat(Enumerable.Range(0, 250).Select(i => $"r-{i * 4}"))
            .OrderBy(_ => Random.Shared.Next())
            .Select(key => ((string?)key, Harness.Body(key)))
            .ToList();
        await mq.PublishManyAsync(h.Queue, messages);
        await using var connection = await mq.CreateConnectionAsync("redis-store");
        var processor = new IdempotentProcessor(effects.CreateStore(), effects.Handler(), Harness.HandlerOptions());
        var consumer = await h.StartAsync(connection, processor, h.Options(concurrency: 4, prefetch: 100, batchSize: batchSize));

        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount >= messages.Count, 60, $"{messages.Count} deliveries acknowledged");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        var (keys, total, max) = await effects.ReadAsync();
        Assert.Equal(unique, keys);
        Assert.Equal(unique, total);
        Assert.Equal(1, max);
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
    }

    [Fact]
    public async Task Redis_store_dead_letters_a_poison_message_and_commits_nothing_for_it()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "redis-poison");
        var effects = new RedisEffects(redis);
        var keys = Enumerable.Range(0, 20).Select(i => $"p-{i}").ToList();
        await mq.PublishManyAsync(h.Queue, keys.Select(k => ((string?)k, Harness.Body(k))).ToList());
        await using var connection = await mq.CreateConnectionAsync("redis-poison");
        var processor = new IdempotentProcessor(effects.CreateStore(), effects.Handler(c => c.Key == "p-7"), Harness.HandlerOptions(maxAttempts: 3));
        var consumer = await h.StartAsync(connection, processor, h.Options());

        await Harness.WaitUntilAsync(async () => await h.DeadLetteredAsync() == 1 && consumer.AcknowledgedCount >= 19, 60, "poison dead-lettered and the rest acked");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        var (applied, total, _) = await effects.ReadAsync();
        Assert.Equal(19, applied);
        Assert.Equal(19, total);
        Assert.Equal(0u, await h.ReadyAsync());
    }
}
