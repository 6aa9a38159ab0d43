using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>The worker unchanged over the Redis store (Redis-held state): the same guarantees as over PostgreSQL.</summary>
public sealed class SqsRedisStoreTests(SqsFixture sqs, RedisFixture redis) : IClassFixture<SqsFixture>, IClassFixture<RedisFixture>
{
    [Fact]
    public async Task Redis_store_applies_each_key_once_with_duplicates_and_two_workers()
    {
        const int unique = 600;
        const int duplicates = 150;
        var queue = await sqs.CreateQueueAsync("redis-store");
        var effects = new RedisEffects(redis);
        var store = effects.CreateStore();
        var random = new Random(9);
        var messages = Enumerable.Range(0, unique).Select(i => (Body: $"{{\"order\":{i}}}", Key: (string?)$"order-{i}"))
            .Concat(Enumerable.Range(0, duplicates).Select(i => (Body: $"{{\"order\":{i * 4}}}", Key: (string?)$"order-{i * 4}")))
            .OrderBy(_ => random.Next())
            .ToList();
        await sqs.SendManyAsync(queue, messages);

        await using var first = Start(sqs.CreateClient(), store, effects.Handler(), Handler("redis-store"), Fast(queue, visibilitySeconds: 3));
        await using var second = Start(sqs.CreateClient(), store, effects.Handler(), Handler("redis-store"), Fast(queue, visibilitySeconds: 3));
        await SqsFixture.WaitUntilAsync(
            async () => (await effects.ReadAsync()).Keys == unique && await sqs.DrainedAsync(queue),
            TimeSpan.FromSeconds(90),
            $"{unique} keys applied in Redis and an empty queue",
            async () => $"{await effects.ReadAsync()} {await sqs.CountsAsync(queue)}");

        var (keys, total, max) = await effects.ReadAsync();
        Assert.Equal(unique, keys);
        Assert.Equal(unique, total);
        Assert.Equal(1, max);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }
}
