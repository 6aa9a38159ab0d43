using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.Kafka.Transactions;
using Idempotency.Postgres;
using Idempotency.Storage;
using Idempotency.TestSupport;
using Microsoft.Extensions.Logging.Testing;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>
/// Regressions for settlement bugs: a message that has not settled (committed or dead-lettered) must never be passed by
/// a stored position or a committed offset, and a partition must never be left paused where nobody resumes it.
/// </summary>
public sealed class KafkaSettlementRegressionTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Offsets kept in the store, batch [b-0, b-1, b-2]: b-1's handler fails, so the batch is redone with the message
    /// before it, [b-0], and that redo meets a store outage. After the outage b-0 commits, b-1 retries in place and b-2
    /// waits behind it (it must not take effect first): no stored position may pass b-1, or a restart, which seeks to the
    /// stored position, would skip b-1 for good.
    /// </summary>
    [Fact]
    public async Task Batch_redo_that_meets_a_store_outage_stores_no_position_past_the_failed_message_so_a_restart_still_processes_it()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("redo-outage");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, ["b-0", "b-1", "b-2"]);
        var direct = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await using var proxied = db.ConnectThroughProxy();
        var viaProxy = new PostgresIdempotencyStore(proxied.DataSource, direct.Options);
        var group = Unique("g");

        var b1Fails = 1;
        var runs = new ConcurrentDictionary<string, int>();
        var handler = Credit(
            table,
            fail: c => c.Key == "b-1" && Volatile.Read(ref b1Fails) == 1,
            onRun: c =>
            {
                // b-0's second run is the redo of [b-0] right after b-1 failed: the store goes away under it.
                if (runs.AddOrUpdate(c.Key, 1, (_, n) => n + 1) == 2 && c.Key == "b-0")
                {
                    proxied.Proxy.Stop();
                    proxied.DataSource.Clear();
                }
            });
        var handlerOptions = new IdempotencyOptions
        {
            HandlerName = "redo-outage",
            Retry = new RetryOptions { MaxAttempts = 1000, InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(200) },
            StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(500) },
        };
        KafkaIdempotencyOptions Batched() => Options(topic, o =>
        {
            o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore;
            o.BatchSize = 3;
            o.BatchMaxWait = TimeSpan.FromSeconds(5);
        });
        var positionSql = $"SELECT offset_value FROM {db.Schema}.{direct.Options.ConsumerPositionsTable} WHERE group_id = @group AND stream = @topic AND partition_id = 0";

        var logger = new FakeLogger();
        await using (var first = Start(cluster, group, new IdempotentProcessor(viaProxy, handler, handlerOptions), Batched(), logger: logger))
        {
            // The consumer saw the outage (partition paused for the store); then the store comes back.
            await WaitUntilAsync(
                () => Task.FromResult(logger.Collector.GetSnapshot().Any(r => r.Id.Id == 2007)),
                Timeout,
                () => Task.FromResult($"no store pause; runs: {string.Join(", ", runs)}"));
            Assert.Equal(0L, await CountAsync(db, table));
            proxied.Proxy.Start();

            // The redo committed b-0 after the outage; b-1 keeps failing and retrying, b-2 waits behind it.
            await WaitUntilAsync(
                async () => await CountAsync(db, table) == 1 && runs.GetValueOrDefault("b-1") >= 4,
                Timeout,
                async () => $"{await CountAsync(db, table)} rows; runs: {string.Join(", ", runs)}");
            Assert.True(runs["b-0"] >= 3, $"b-0 ran {runs["b-0"]} times: the redo was not retried after the outage");
            Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = 'b-2'"));
            await first.StopAsync();
        }

        // Stopped while b-1 still retries: no stored position and no committed offset may pass offset 1.
        Assert.Equal(0L, await db.ScalarAsync<long>(positionSql, new { group, topic }));
        Assert.True((await cluster.CommittedOffsetsAsync(group, topic, 1))[0] <= 1, "the broker commit passed b-1");
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = 'b-1'"));

        // Restarted (b-1's cause fixed): it starts at b-1 and processes it, then b-2.
        Volatile.Write(ref b1Fails, 0);
        var outcomes = new ConcurrentDictionary<string, ProcessingOutcome>();
        await using (var second = Start(cluster, group, new IdempotentProcessor(direct, handler, handlerOptions), Batched(), r => outcomes[r.Message.Key!] = r.Outcome))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal(ProcessingOutcome.Processed, outcomes["b-1"]);
        Assert.Equal(ProcessingOutcome.Processed, outcomes["b-2"]);
        Assert.False(outcomes.ContainsKey("b-0"), "b-0 was re-read: the restart did not start from the stored position");
        Assert.Equal(3L, await CountAsync(db, table));
        Assert.Equal(3L, await AppliedAsync(db, table));
        Assert.Equal(2L, await db.ScalarAsync<long>(positionSql, new { group, topic }));
        Assert.Equal([0L], cluster.EndOffsets(topic + ".dlq", 1));
    }

    /// <summary>
    /// Offsets kept in the store, batch [k-0, k-1, k-1 with another payload, k-3] under <see cref="PayloadMismatchPolicy.Fail"/>:
    /// the changed copy follows k-1 inside the batch and is a payload mismatch, retried then dead-lettered. k-3 must not
    /// take effect (nor store its position) before that: the batch ends at the changed copy.
    /// </summary>
    [Fact]
    public async Task A_changed_copy_of_a_key_inside_a_batch_is_dead_lettered_before_the_later_message_commits_or_stores_its_position()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("follower-mismatch");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, ["k-0", "k-1"]);
        Produce(cluster, topic, ["k-1"], body: _ => "{\"id\":\"k-1\",\"amount\":500}");
        Produce(cluster, topic, ["k-3"]);
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var positionSql = $"SELECT coalesce(max(offset_value), -1) FROM {db.Schema}.{store.Options.ConsumerPositionsTable} WHERE group_id = @group AND stream = @topic AND partition_id = 0";
        var group = Unique("g");
        long? deadLettersWhenK3Ran = null;
        long? positionWhenK3Ran = null;
        var handler = Credit(table, onRun: c =>
        {
            if (c.Key == "k-3")
            {
                deadLettersWhenK3Ran ??= cluster.EndOffsets(topic + ".dlq", 1)[0];
                positionWhenK3Ran ??= db.ScalarAsync<long>(positionSql, new { group, topic }).GetAwaiter().GetResult();
            }
        });
        var handlerOptions = new IdempotencyOptions
        {
            HandlerName = "follower-mismatch",
            PayloadMismatchPolicy = PayloadMismatchPolicy.Fail,
            Retry = new RetryOptions { MaxAttempts = 3, InitialDelay = TimeSpan.FromMilliseconds(300), MaxDelay = TimeSpan.FromMilliseconds(300) },
        };
        var options = Options(topic, o =>
        {
            o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore;
            o.BatchSize = 4;
            o.BatchMaxWait = TimeSpan.FromSeconds(5);
        });

        await using (var running = Start(cluster, group, new IdempotentProcessor(store, handler, handlerOptions), options))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal(1L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
        Assert.Equal(1L, deadLettersWhenK3Ran);
        Assert.True(positionWhenK3Ran <= 1, $"k-3 ran with the stored position at {positionWhenK3Ran}, past the changed copy at offset 2");
        Assert.Equal(3L, await CountAsync(db, table));
        Assert.Equal(3L, await AppliedAsync(db, table));
    }

    /// <summary>
    /// A replay (a second group re-reading a processed topic) in per-message mode: the queued messages are looked up
    /// together. A changed payload of a known key under <see cref="PayloadMismatchPolicy.Fail"/> gets a retry decision
    /// from that look-up, which settles nothing: it must be retried and dead-lettered before the offset passes it.
    /// </summary>
    [Fact]
    public async Task Payload_mismatch_found_by_the_look_ahead_is_retried_then_dead_lettered_before_the_offset_passes_it()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("lookahead-mismatch");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);

        // "x" first: the replaying group reads it while its duplicate rate is still low, so only the changed copy of "x"
        // (offset 150, behind 149 duplicates) can be in a batch look-up.
        Produce(cluster, topic, Enumerable.Range(0, 150).Select(i => i == 0 ? "x" : $"m-{i}"));
        var direct = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var handlerOptions = new IdempotencyOptions
        {
            HandlerName = "lookahead-mismatch",
            PayloadMismatchPolicy = PayloadMismatchPolicy.Fail,
            Retry = new RetryOptions { MaxAttempts = 3, InitialDelay = TimeSpan.FromMilliseconds(300), MaxDelay = TimeSpan.FromMilliseconds(300) },
        };
        var original = Unique("g");
        await using (var running = Start(cluster, original, new IdempotentProcessor(direct, Credit(table), handlerOptions), Options(topic)))
        {
            await WaitForCommittedToEndAsync(cluster, original, topic, 1, Timeout);
        }

        const long mismatchOffset = 150;
        Produce(cluster, topic, ["x"], body: _ => "{\"id\":\"x\",\"amount\":500}");
        Produce(cluster, topic, Enumerable.Range(0, 20).Select(i => $"n-{i}"));
        var store = new LookUpRecordingStore(direct);
        var outcomes = new ConcurrentBag<ProcessingResult>();
        var replay = Unique("g");
        string? violation = null;
        await using (var running = Start(cluster, replay, new IdempotentProcessor(store, Credit(table), handlerOptions), Options(topic, o => o.BatchSize = 1), outcomes.Add))
        {
            // Committed offset first, then the dead-letter topic: an offset past "x" read before its dead-letter exists
            // means the offset passed it first.
            await WaitUntilAsync(
                async () =>
                {
                    var committed = (await cluster.CommittedOffsetsAsync(replay, topic, 1))[0];
                    var deadLetters = cluster.EndOffsets(topic + ".dlq", 1)[0];
                    if (committed > mismatchOffset && deadLetters == 0)
                    {
                        violation ??= $"committed offset {committed} passed {mismatchOffset} before it was dead-lettered";
                    }

                    return committed == 171;
                },
                Timeout,
                async () => $"committed {(await cluster.CommittedOffsetsAsync(replay, topic, 1))[0]} of 171");
        }

        Assert.True(store.BatchLookedUpKeys.Contains("x"), "the changed copy of x was not looked up with the queued messages: the test missed the look-ahead path");
        Assert.Null(violation);
        var dead = ReadDeadLetters(cluster, topic + ".dlq", expected: 1).Single();
        string Header(string name) => Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(name));
        Assert.Equal(DeliveryPolicy.PayloadMismatch, Header(DeadLetterHeaders.ReasonCode));
        Assert.Equal("3", Header(DeadLetterHeaders.Attempts));
        Assert.Equal(mismatchOffset.ToString(System.Globalization.CultureInfo.InvariantCulture), Header(KafkaDeadLetterHeaders.OriginalOffset));

        // The changed payload never ran: x keeps its one effect from the first payload.
        Assert.Equal(170L, await CountAsync(db, table));
        Assert.Equal(170L, await AppliedAsync(db, table));
        Assert.Equal(5L, await db.ScalarAsync<long>($"SELECT amount FROM {table} WHERE id = 'x'"));
        Assert.Equal(150, outcomes.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(20, outcomes.Count(r => r.Outcome == ProcessingOutcome.Processed));
        var mismatch = Assert.Single(outcomes, r => r.Outcome == ProcessingOutcome.PayloadMismatch);
        Assert.Equal(mismatchOffset, Assert.IsType<ConsumeResult<byte[], byte[]>>(mismatch.Message.Native).Offset.Value);
    }

    /// <summary>
    /// Under the cooperative-sticky assignor the partitions kept across a rebalance keep their fetch position, so a batch
    /// the transactional processor dropped would be skipped: the processor refuses that assignor when built.
    /// </summary>
    [Fact]
    public void Transactional_processor_refuses_the_cooperative_sticky_assignor_and_accepts_an_eager_one()
    {
        var options = new KafkaTransactionalOptions { TransactionalId = "tx-cooperative" };
        options.Topics.Add("in");
        var producer = new ProducerConfig { BootstrapServers = "127.0.0.1:1" };
        var cooperative = new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g", PartitionAssignmentStrategy = PartitionAssignmentStrategy.CooperativeSticky };

        var error = Assert.Throws<ArgumentException>(() => new KafkaTransactionalProcessor(cooperative, producer, options, (_, _) => ValueTask.CompletedTask));

        Assert.Contains("CooperativeSticky", error.Message);
        Assert.Equal("consumerConfig", error.ParamName);
        var eager = new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g", PartitionAssignmentStrategy = PartitionAssignmentStrategy.RoundRobin };
        using var accepted = new KafkaTransactionalProcessor(eager, producer, options, (_, _) => ValueTask.CompletedTask);
    }

    /// <summary>
    /// Partitions paused at the broker for backpressure (their buffer full behind a slow handler) when an eager
    /// rebalance revokes them: librdkafka keeps an application's pause across the revoke and the re-assign, so a
    /// partition assigned back must be resumed by the consumer, or it is never read again.
    /// </summary>
    [Fact]
    public async Task Partitions_paused_for_backpressure_when_an_eager_rebalance_revokes_them_are_read_again_once_assigned_back()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("bp-rebalance");
        const int partitions = 6;
        const int total = 3_000;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, total).Select(i => $"bp-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, onRun: _ => Thread.Sleep(2)), HandlerOptions("bp-rebalance"));
        var group = Unique("g");

        // A buffer of 50 per partition behind a slow handler: the partitions spend most of their time paused.
        RunningConsumer StartEager(ConcurrentBag<ProcessingResult> results)
        {
            var config = ConsumerConfig(cluster, group);
            config.PartitionAssignmentStrategy = PartitionAssignmentStrategy.Range;
            var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(config, processor, Options(topic, o => o.MaxBufferedMessagesPerPartition = 50));
            consumer.ResultObserver = results.Add;
            return new RunningConsumer(consumer);
        }

        var a = new ConcurrentBag<ProcessingResult>();
        var b = new ConcurrentBag<ProcessingResult>();
        await using var first = StartEager(a);
        await WaitUntilAsync(async () => await CountAsync(db, table) >= 300, Timeout, async () => $"{await CountAsync(db, table)} rows");

        // The second member joins (every partition revoked, then split) and leaves again (all assigned back to the first).
        await using (var second = StartEager(b))
        {
            await WaitUntilAsync(() => Task.FromResult(b.Count(r => r.Outcome == ProcessingOutcome.Processed) >= 30), Timeout, async () => $"the second consumer processed {b.Count}; {await CountAsync(db, table)} rows");
            await second.StopAsync();
        }

        await WaitUntilAsync(
            async () => await CountAsync(db, table) == total,
            TimeSpan.FromSeconds(90),
            async () => $"{await CountAsync(db, table)} of {total} rows; committed [{string.Join(",", await cluster.CommittedOffsetsAsync(group, topic, partitions))}] of end [{string.Join(",", cluster.EndOffsets(topic, partitions))}]");
        await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        await first.StopAsync();

        Assert.Equal((long)total, await CountAsync(db, table));
        Assert.Equal((long)total, await AppliedAsync(db, table));
        Assert.Equal(total, a.Concat(b).Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(cluster.EndOffsets(topic, partitions), await cluster.CommittedOffsetsAsync(group, topic, partitions));
    }

    /// <summary>
    /// A consumer the user built (no wrapper rebalance handlers) sees a revoke only afterwards, in its periodic look at
    /// the assignment. Partitions it paused for backpressure that another member holds for longer than that look lose
    /// their lanes; assigned back, librdkafka still holds them paused and no message arrives to start a lane, so the
    /// wrapper itself must notice them in the assignment and resume them.
    /// </summary>
    [Fact]
    public async Task Partitions_a_user_built_consumer_paused_that_another_member_held_for_a_while_are_read_again_once_assigned_back()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("bp-own");
        const int partitions = 6;
        const int total = 1_500;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, total).Select(i => $"own-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        using var handlersMayRun = new ManualResetEventSlim(initialState: true);
        var processor = new IdempotentProcessor(store, Credit(table, onRun: _ => handlersMayRun.Wait()), HandlerOptions("bp-own"));
        var group = Unique("g");

        // The user's consumer, built and subscribed by them, with a buffer of 50 per partition.
        var config = ConsumerConfig(cluster, group);
        config.EnableAutoCommit = false;
        config.PartitionAssignmentStrategy = PartitionAssignmentStrategy.Range;
        using var consumer = new ConsumerBuilder<byte[], byte[]>(config).Build();
        consumer.Subscribe(topic);
        using var deadLetters = cluster.CreateProducer();
        var options = new KafkaIdempotencyOptions { MaxBufferedMessagesPerPartition = 50, CommitEveryMessages = 50, CommitInterval = TimeSpan.FromMilliseconds(200), PollTimeout = TimeSpan.FromMilliseconds(50) };
        var results = new ConcurrentBag<ProcessingResult>();
        using var wrapper = new IdempotentKafkaConsumer<byte[], byte[]>(consumer, processor, options, deadLetters) { ResultObserver = results.Add };
        await using var running = new RunningConsumer(wrapper);
        await WaitUntilAsync(async () => await CountAsync(db, table) >= 300, Timeout, async () => $"{await CountAsync(db, table)} rows");

        // Handlers stall: every partition's buffer fills and the partition is paused, and it stays paused through the
        // revoke below, whose lanes finish their work in flight only once handlers run again.
        handlersMayRun.Reset();
        await Task.Delay(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken);

        // Another member joins, takes half the partitions and holds them well past the wrapper's look at the assignment
        // (reading, committing nothing), then leaves: every partition is assigned back to the user's consumer.
        var otherConfig = ConsumerConfig(cluster, group);
        otherConfig.EnableAutoCommit = false;
        otherConfig.PartitionAssignmentStrategy = PartitionAssignmentStrategy.Range;
        using (var other = new ConsumerBuilder<byte[], byte[]>(otherConfig).Build())
        {
            other.Subscribe(topic);
            var deadline = DateTime.UtcNow + Timeout;
            while (other.Assignment.Count == 0 && DateTime.UtcNow < deadline)
            {
                other.Consume(TimeSpan.FromMilliseconds(50));
            }

            Assert.NotEmpty(other.Assignment);
            for (var held = DateTime.UtcNow + TimeSpan.FromSeconds(3); DateTime.UtcNow < held;)
            {
                other.Consume(TimeSpan.FromMilliseconds(50));
                if (!handlersMayRun.IsSet && DateTime.UtcNow > held - TimeSpan.FromSeconds(2))
                {
                    handlersMayRun.Set();
                }
            }

            other.Close();
        }

        await WaitUntilAsync(
            async () => await CountAsync(db, table) == total,
            TimeSpan.FromSeconds(90),
            async () => $"{await CountAsync(db, table)} of {total} rows; committed [{string.Join(",", await cluster.CommittedOffsetsAsync(group, topic, partitions))}] of end [{string.Join(",", cluster.EndOffsets(topic, partitions))}]");
        await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        await running.StopAsync();

        Assert.Equal((long)total, await AppliedAsync(db, table));
        Assert.Equal(total, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(cluster.EndOffsets(topic, partitions), await cluster.CommittedOffsetsAsync(group, topic, partitions));
    }

    /// <summary>Reads the dead-letter topic from the start; fails unless exactly <paramref name="expected"/> messages are on it.</summary>
    private static List<ConsumeResult<byte[], byte[]>> ReadDeadLetters(MockKafkaCluster cluster, string topic, int expected)
    {
        using var consumer = new ConsumerBuilder<byte[], byte[]>(new ConsumerConfig { BootstrapServers = cluster.BootstrapServers, GroupId = Unique("dlq"), AutoOffsetReset = AutoOffsetReset.Earliest }).Build();
        consumer.Subscribe(topic);
        var messages = new List<ConsumeResult<byte[], byte[]>>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (messages.Count < expected && DateTime.UtcNow < deadline)
        {
            if (consumer.Consume(TimeSpan.FromMilliseconds(200)) is { IsPartitionEOF: false, Message: not null } result)
            {
                messages.Add(result);
            }
        }

        Assert.Null(consumer.Consume(TimeSpan.FromMilliseconds(300)));
        consumer.Close();
        Assert.Equal(expected, messages.Count);
        return messages;
    }

    /// <summary>The real PostgreSQL store, recording the keys that went through batch look-ups.</summary>
    private sealed class LookUpRecordingStore(PostgresIdempotencyStore inner) : IDeferredClaimStore
    {
        public ConcurrentBag<string> BatchLookedUpKeys { get; } = [];

        public string Name => inner.Name;

        public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default) => inner.BeginAsync(cancellationToken);

        public ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default) =>
            inner.FindProcessedAsync(request, cancellationToken);

        public ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
        {
            foreach (var request in requests)
            {
                BatchLookedUpKeys.Add(request.Key);
            }

            return inner.FindProcessedBatchAsync(requests, cancellationToken);
        }

        public bool IsUnavailable(Exception exception) => inner.IsUnavailable(exception);

        public StoreFailure ClassifyFailure(Exception exception) => ((IIdempotencyStore)inner).ClassifyFailure(exception);

        public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => inner.PingAsync(cancellationToken);
    }
}
