using System.Collections.Concurrent;
using Idempotency.Storage;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>
/// A second group re-reading a processed topic (a replay) in per-message mode: once duplicates dominate, the queued
/// messages of a partition are looked up in one round trip and the duplicates settle without a transaction.
/// </summary>
public sealed class KafkaReplayTests(PostgresFixture db, RedisFixture redis) : IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    // 10,000 messages one transaction each: generous, so that a machine at load 50+ still meets it (it only bounds a wait).
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(180);

    [Theory]
    [InlineData(ClaimTiming.BeforeHandler)]
    [InlineData(ClaimTiming.AtCommit)]
    public async Task Replay_of_a_processed_topic_with_new_messages_mixed_in_applies_only_the_new_ones_and_looks_keys_up_in_batches(ClaimTiming timing)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("replay");
        const int partitions = 3;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, 3_000).Select(i => $"r-{i}"));
        await using var effects = await EffectStore.CreateAsync(StoreKind.Postgres, db, redis);
        var store = new CountingStore((IDeferredClaimStore)effects.Store);
        var options = new IdempotencyOptions { HandlerName = "replay", ClaimTiming = timing };

        var first = Unique("g");
        await using (var running = Start(cluster, first, new IdempotentProcessor(store, effects.Handler(), options), Options(topic, o => o.BatchSize = 1)))
        {
            await WaitForCommittedToEndAsync(cluster, first, topic, partitions, Timeout);
        }

        // New keys after the replayed ones; the replaying group reads all 3,300 with its queues full of duplicates.
        Produce(cluster, topic, Enumerable.Range(3_000, 300).Select(i => $"r-{i}"));
        var beginsBefore = store.Begins;
        var outcomes = new ConcurrentDictionary<ProcessingOutcome, int>();
        var replay = Unique("g");
        await using (var running = Start(cluster, replay, new IdempotentProcessor(store, effects.Handler(), options), Options(topic, o => o.BatchSize = 1), r => outcomes.AddOrUpdate(r.Outcome, 1, (_, n) => n + 1)))
        {
            await WaitForCommittedToEndAsync(cluster, replay, topic, partitions, Timeout);
        }

        Assert.Equal(new EffectCounts(3_300, 3_300, 1), await effects.ReadAsync());
        Assert.Equal(3_000, outcomes.GetValueOrDefault(ProcessingOutcome.Duplicate));
        Assert.Equal(300, outcomes.GetValueOrDefault(ProcessingOutcome.Processed));
        Assert.Equal(cluster.EndOffsets(topic, partitions), await cluster.CommittedOffsetsAsync(replay, topic, partitions));

        // The 300 new messages each need a transaction; the 3,000 duplicates almost none (only the first few per
        // partition, before the duplicate rate crosses its threshold), and they were checked many to a look-up.
        Assert.InRange(store.Begins - beginsBefore, 300, 400);
        Assert.InRange(store.BatchLookUps, 1, 3_000 / 5);
        Assert.True(store.KeysInBatchLookUps >= 2_500, $"only {store.KeysInBatchLookUps} keys went through batch look-ups");
    }

    /// <summary>The real PostgreSQL store, counting transactions and batch look-ups.</summary>
    private sealed class CountingStore(IDeferredClaimStore inner) : IDeferredClaimStore
    {
        private int _begins;
        private int _batchLookUps;
        private int _keysInBatchLookUps;

        public int Begins => Volatile.Read(ref _begins);

        public int BatchLookUps => Volatile.Read(ref _batchLookUps);

        public int KeysInBatchLookUps => Volatile.Read(ref _keysInBatchLookUps);

        public string Name => inner.Name;

        public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _begins);
            return inner.BeginAsync(cancellationToken);
        }

        public ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default) =>
            inner.FindProcessedAsync(request, cancellationToken);

        public ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _batchLookUps);
            Interlocked.Add(ref _keysInBatchLookUps, requests.Count);
            return inner.FindProcessedBatchAsync(requests, cancellationToken);
        }

        public bool IsUnavailable(Exception exception) => inner.IsUnavailable(exception);

        public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => inner.PingAsync(cancellationToken);
    }
}
