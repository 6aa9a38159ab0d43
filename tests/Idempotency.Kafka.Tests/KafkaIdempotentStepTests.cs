using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>The drop-in step inside a consume loop the user keeps, and the delivery observer of the adapter.</summary>
public sealed class KafkaIdempotentStepTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    /// <summary>
    /// A plain Confluent.Kafka loop (auto-commit of stored offsets) with two added lines: duplicates are skipped (the
    /// effects are exactly the unique keys' rows), the poison message is retried MaxAttempts times, then dead-lettered
    /// with its reason headers, and no committed offset ever passes a message whose transaction has not committed.
    /// </summary>
    [Fact]
    public async Task A_hand_written_loop_with_the_step_skips_duplicates_retries_then_dead_letters_and_commits_only_after_the_transaction()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("step");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dlq", 1);
        var unique = Enumerable.Range(0, 30).Select(i => $"s-{i}").ToList();
        Produce(cluster, topic, unique.Concat(unique.Take(10)).Append("poison").Concat(unique.Skip(20)));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var group = Unique("g");
        var passed = new ConcurrentBag<string>();
        var poisonRuns = 0;
        var handler = Credit(table, fail: c => c.Key == "poison", onRun: c =>
        {
            if (c.Key == "poison")
            {
                Interlocked.Increment(ref poisonRuns);
            }

            // Inside the transaction, before its commit: the group's offset must not have passed this message yet.
            var record = c.GetNative<ConsumeResult<byte[], byte[]>>();
            var committed = cluster.CommittedOffsetsAsync(group, topic, 2).GetAwaiter().GetResult()[record.Partition.Value];
            if (committed > record.Offset.Value)
            {
                passed.Add($"{record.TopicPartitionOffset} with {committed} committed");
            }
        });
        var processor = new IdempotentProcessor(store, handler, HandlerOptions("step", maxAttempts: 3));
        using var deadLetters = cluster.CreateProducer();
        var step = new KafkaIdempotentStep<byte[], byte[]>(processor, deadLetterProducer: deadLetters);

        var config = ConsumerConfig(cluster, group);
        config.EnableAutoCommit = true;
        config.AutoCommitIntervalMs = 100;
        config.EnableAutoOffsetStore = false;
        using var stop = new CancellationTokenSource();
        var loop = Task.Run(async () =>
        {
            using var consumer = new ConsumerBuilder<byte[], byte[]>(config).Build();
            consumer.Subscribe(topic);
            while (!stop.IsCancellationRequested)
            {
                var record = consumer.Consume(TimeSpan.FromMilliseconds(100));
                if (record is null)
                {
                    continue;
                }

                var result = await step.RunAsync(record, stop.Token);              // added
                await step.CompleteAsync(consumer, record, result, stop.Token);  // added (was: consumer.StoreOffset(record))
            }

            consumer.Close();
        }, TestContext.Current.CancellationToken);

        try
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
        }
        finally
        {
            await stop.CancelAsync();
            await loop.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        }

        Assert.Equal(30L, await CountAsync(db, table));
        Assert.Equal(30L, await AppliedAsync(db, table));
        Assert.Equal(3, poisonRuns);
        Assert.Empty(passed);
        var dead = ReadAll(cluster, topic + ".dlq", 1);
        var letter = Assert.Single(dead);
        Assert.Equal("poison", Encoding.UTF8.GetString(letter.Message.Key));
        Assert.Equal(DeliveryPolicy.HandlerFailed, Header(letter, DeadLetterHeaders.ReasonCode));
        Assert.Equal("3", Header(letter, DeadLetterHeaders.Attempts));
        Assert.Equal(topic, Header(letter, KafkaDeadLetterHeaders.OriginalTopic));
    }

    /// <summary>
    /// The step pauses every assigned partition while the store is down. A rebalance during the outage takes some of
    /// them to another member; they come back after the store answered, and librdkafka still holds them paused (it keeps
    /// an application's pause across a revoke and a re-assign). The step must not leave them paused, or the loop never
    /// reads them again.
    /// </summary>
    [Fact]
    public async Task Partitions_the_step_paused_for_a_store_outage_and_a_rebalance_took_away_are_read_again_once_assigned_back()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("step-outage");
        const int partitions = 4;
        const int total = 400;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, total).Select(i => $"so-{i}"));
        var direct = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await using var proxied = db.ConnectThroughProxy();
        var store = new Idempotency.Postgres.PostgresIdempotencyStore(proxied.DataSource, direct.Options);
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("step-outage"));
        var step = new KafkaIdempotentStep<byte[], byte[]>(processor);
        var group = Unique("g");
        var pausedForStore = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var resumedAfterStore = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);

        ConsumerConfig Config()
        {
            var config = ConsumerConfig(cluster, group);
            config.EnableAutoCommit = true;
            config.AutoCommitIntervalMs = 100;
            config.EnableAutoOffsetStore = false;
            config.PartitionAssignmentStrategy = PartitionAssignmentStrategy.Range;
            return config;
        }

        using var stop = new CancellationTokenSource();
        var loop = Task.Run(async () =>
        {
            using var consumer = new ConsumerBuilder<byte[], byte[]>(Config()).Build();
            consumer.Subscribe(topic);
            while (!stop.IsCancellationRequested)
            {
                var record = consumer.Consume(TimeSpan.FromMilliseconds(100));
                if (record is null)
                {
                    continue;
                }

                var result = await step.RunAsync(record, stop.Token);
                var waitsForStore = result.Action == DeliveryAction.PauseAndRetry;
                if (waitsForStore)
                {
                    pausedForStore.TrySetResult();
                }

                await step.CompleteAsync(consumer, record, result, stop.Token);
                if (waitsForStore)
                {
                    resumedAfterStore.TrySetResult();
                }
            }

            consumer.Close();
        }, TestContext.Current.CancellationToken);

        try
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) >= 50, Timeout, async () => $"{await CountAsync(db, table)} rows");
            proxied.Proxy.Stop();
            proxied.DataSource.Clear();
            await pausedForStore.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken);

            // Another member joins while the step holds every partition paused, and takes half of them.
            using (var other = new ConsumerBuilder<byte[], byte[]>(new ConsumerConfig(Config()) { EnableAutoCommit = false }).Build())
            {
                other.Subscribe(topic);
                var deadline = DateTime.UtcNow + Timeout;
                while (other.Assignment.Count == 0 && DateTime.UtcNow < deadline)
                {
                    other.Consume(TimeSpan.FromMilliseconds(50));
                }

                Assert.NotEmpty(other.Assignment);

                // The store answers again while the other member still holds its half; then the other member leaves.
                proxied.Proxy.Start();
                while (!resumedAfterStore.Task.IsCompleted && DateTime.UtcNow < deadline)
                {
                    other.Consume(TimeSpan.FromMilliseconds(50));
                }

                Assert.True(resumedAfterStore.Task.IsCompleted, "the step did not resume after the store answered");
                other.Close();
            }

            await WaitUntilAsync(
                async () => await CountAsync(db, table) == total,
                Timeout,
                async () => $"{await CountAsync(db, table)} of {total} rows; committed [{string.Join(",", await cluster.CommittedOffsetsAsync(group, topic, partitions))}] of end [{string.Join(",", cluster.EndOffsets(topic, partitions))}]");
            await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        }
        finally
        {
            await stop.CancelAsync();
            await loop.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        }

        Assert.Equal((long)total, await AppliedAsync(db, table));
    }

    [Fact]
    public async Task The_step_decides_without_a_broker_call_retry_then_dead_letter_with_reason_headers()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, fail: c => c.Key == "bad"), HandlerOptions("step-decide", maxAttempts: 2));
        var step = new KafkaIdempotentStep<byte[], byte[]>(processor);
        var good = Record("ok", offset: 0);
        var bad = Record("bad", offset: 1);

        var first = await step.RunAsync(good, TestContext.Current.CancellationToken);
        var again = await step.RunAsync(good, TestContext.Current.CancellationToken);
        var failed = await step.RunAsync(bad, TestContext.Current.CancellationToken);
        var dead = await step.RunAsync(bad, TestContext.Current.CancellationToken);

        Assert.Equal((DeliveryAction.Acknowledge, ProcessingOutcome.Processed), (first.Action, first.Result.Outcome));
        Assert.Equal((DeliveryAction.Acknowledge, ProcessingOutcome.Duplicate), (again.Action, again.Result.Outcome));
        Assert.Equal((DeliveryAction.Retry, 1), (failed.Action, failed.Attempt));
        Assert.True(failed.Delay > TimeSpan.Zero);
        Assert.Equal((DeliveryAction.DeadLetter, 2), (dead.Action, dead.Attempt));
        var letter = step.CreateDeadLetter(bad, dead);
        Assert.Equal(DeliveryPolicy.HandlerFailed, Encoding.UTF8.GetString(letter.Headers.GetLastBytes(DeadLetterHeaders.ReasonCode)));
        Assert.Equal("1", Encoding.UTF8.GetString(letter.Headers.GetLastBytes(KafkaDeadLetterHeaders.OriginalOffset)));
        Assert.Equal("orders.dlq", step.GetDeadLetterTopic("orders"));
        Assert.Equal(1L, await AppliedAsync(db, table));
    }

    /// <summary>Every message the adapter settles reaches the observers once, with its outcome; retries are told as not settled.</summary>
    [Theory]
    [InlineData(1)]
    [InlineData(100)]
    public async Task An_observer_sees_every_settled_message_with_its_outcome(int batchSize)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("observed");
        cluster.CreateTopic(topic, 3);
        cluster.CreateTopic(topic + ".dlq", 1);
        var unique = Enumerable.Range(0, 40).Select(i => $"o-{i}").ToList();
        Produce(cluster, topic, unique.Append("poison").Concat(unique.Take(15)));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, fail: c => c.Key == "poison"), HandlerOptions("observed", maxAttempts: 3));
        var observer = new RecordingObserver();
        var options = Options(topic, o => o.BatchSize = batchSize);
        options.Observers.Add(observer);
        var group = Unique("g");

        await using (var running = Start(cluster, group, processor, options))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 3, Timeout);
            await running.StopAsync();
        }

        var seen = observer.Seen.ToList();
        var settled = seen.Where(o => o.Settled).ToList();
        Assert.Equal(56, settled.Count);
        Assert.Equal(40, settled.Count(o => o.Outcome == ProcessingOutcome.Processed && o.Action == DeliveryAction.Acknowledge));
        Assert.Equal(15, settled.Count(o => o.Outcome == ProcessingOutcome.Duplicate && o.Action == DeliveryAction.Acknowledge));
        var poison = Assert.Single(settled, o => o.Key == "poison");
        Assert.Equal((DeliveryAction.DeadLetter, DeliveryPolicy.HandlerFailed, 3), (poison.Action, poison.ReasonCode, poison.Attempt));
        Assert.Equal([1, 2], seen.Where(o => !o.Settled && o.Key == "poison").Select(o => o.Attempt).Order());
        Assert.All(seen, o => Assert.Equal(("kafka", topic, "observed"), (o.Broker, o.Destination, o.Handler)));
        Assert.Equal(unique.Count, settled.Where(o => o.Outcome == ProcessingOutcome.Processed).Select(o => o.Key).Distinct().Count());
    }

    private static ConsumeResult<byte[], byte[]> Record(string key, long offset)
    {
        var bytes = Encoding.UTF8.GetBytes(key);
        return new ConsumeResult<byte[], byte[]>
        {
            TopicPartitionOffset = new TopicPartitionOffset("orders", 0, offset),
            Message = new Message<byte[], byte[]> { Key = bytes, Value = bytes, Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, bytes } }, Timestamp = Timestamp.Default },
        };
    }

    private static string Header(ConsumeResult<byte[], byte[]> record, string name) => Encoding.UTF8.GetString(record.Message.Headers.GetLastBytes(name));
}
