using System.Collections.Concurrent;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>The consumer unchanged over the Redis store (Redis-held state): the same guarantees as over PostgreSQL.</summary>
public sealed class KafkaRedisStoreTests(RedisFixture redis) : IClassFixture<RedisFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData(1)]
    [InlineData(50)]
    public async Task Redis_store_applies_each_key_once_with_reproduced_messages_and_commits_to_the_end(int batchSize)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("redis-orders");
        const int partitions = 4;
        cluster.CreateTopic(topic, partitions);
        var unique = Enumerable.Range(0, 2_000).Select(i => $"order-{i}").ToList();
        var reproduced = Enumerable.Range(0, 500).Select(i => $"order-{(i * 7) % 2_000}");
        Produce(cluster, topic, unique.Concat(reproduced));
        var effects = new RedisEffects(redis);
        var processor = new IdempotentProcessor(effects.CreateStore(), effects.Handler(), HandlerOptions("redis-orders"));
        var outcomes = new ConcurrentDictionary<ProcessingOutcome, int>();
        var group = Unique("g");
        await using var running = Start(cluster, group, processor, Options(topic, o => o.BatchSize = batchSize), r => outcomes.AddOrUpdate(r.Outcome, 1, (_, n) => n + 1));

        await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        await running.StopAsync();

        var (keys, total, max) = await effects.ReadAsync();
        Assert.Equal(2_000, keys);
        Assert.Equal(2_000, total);
        Assert.Equal(1, max);
        Assert.Equal(2_000, outcomes.GetValueOrDefault(ProcessingOutcome.Processed));
        Assert.Equal(500, outcomes.GetValueOrDefault(ProcessingOutcome.Duplicate));
        Assert.Equal(cluster.EndOffsets(topic, partitions), await cluster.CommittedOffsetsAsync(group, topic, partitions));
    }
}
