using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using Microsoft.Extensions.Logging.Testing;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>Lost partitions, a consumer the user built, unreadable messages and a dead-letter topic that refuses writes.</summary>
public sealed class KafkaEdgePathTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Lost_partitions_commit_nothing_and_their_in_flight_work_rolls_back()
    {
        using var cluster = MockKafkaCluster.Start();
        Assert.SkipUnless(cluster.IsMock, "losing the assignment needs injected heartbeat errors (librdkafka's mock cluster)");
        var topic = Unique("lost");
        cluster.CreateTopic(topic, 1);
        Produce(cluster, topic, Enumerable.Range(0, 10).Select(i => $"l-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();

        // l-5 blocks its partition (the first time only) until its work is cancelled.
        var stuck = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var blockedOnce = 0;
        var runs = new ConcurrentDictionary<string, int>();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            runs.AddOrUpdate(context.Key, 1, (_, n) => n + 1);
            if (context.Key == "l-5" && Interlocked.Exchange(ref blockedOnce, 1) == 0)
            {
                stuck.SetResult();
                await Task.Delay(Timeout, ct);
            }

            await Credit(table).HandleAsync(context, ct);
        }), HandlerOptions("lost"));
        var logger = new FakeLogger();
        var group = Unique("g");

        // Lazy commits that never fire on their own: only a revoke or shutdown could commit.
        var settled = 0;
        await using var running = Start(cluster, group, processor, Options(topic, o => { o.BatchSize = 1; o.CommitEveryMessages = 1_000_000; o.CommitInterval = TimeSpan.FromHours(1); }), _ => Interlocked.Increment(ref settled), logger);
        await stuck.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken);
        Assert.Equal(5L, await CountAsync(db, table));

        // The coordinator forgets the member: librdkafka treats its assignment as lost (not revoked) and rejoins.
        cluster.PushRequestErrors(MockKafkaCluster.ApiHeartbeat, ErrorCode.UnknownMemberId);
        await WaitUntilAsync(
            () => Task.FromResult(logger.Collector.GetSnapshot().Any(r => r.Id.Id == 2002)),
            Timeout,
            () => Task.FromResult("no 'partitions lost' log; last: " + logger.LatestRecord.Message));

        // Five messages had committed in the database, yet the lost handler committed none of their offsets,
        // and l-5, cancelled in flight, rolled back.
        Assert.True((await cluster.CommittedOffsetsAsync(group, topic, 1))[0] < 0, "the lost handler committed an offset");
        Assert.DoesNotContain(logger.Collector.GetSnapshot(), r => r.Id.Id == 2001);
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = 'l-5'"));

        // Reassigned, the partition is re-read from the start: five duplicates, five new, each effect once.
        await WaitUntilAsync(
            async () => Volatile.Read(ref settled) == 15 && await CountAsync(db, table) == 10,
            Timeout,
            async () => $"{Volatile.Read(ref settled)} results, {await CountAsync(db, table)} rows; log: {string.Join(" | ", logger.Collector.GetSnapshot().Select(r => r.Message))}");
        await running.StopAsync();
        Assert.Equal(10L, await AppliedAsync(db, table));
        Assert.Equal(2, runs["l-5"]);
        Assert.Equal(10L, (await cluster.CommittedOffsetsAsync(group, topic, 1))[0]);
    }

    [Fact]
    public async Task Wrapping_a_consumer_the_user_built_and_subscribed_applies_each_key_once_dead_letters_and_commits_to_the_end()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("own");
        cluster.CreateTopic(topic, 3);
        cluster.CreateTopic(topic + ".dlq", 1);
        var keys = Enumerable.Range(0, 60).Select(i => $"o-{i}").ToList();
        Produce(cluster, topic, keys.Concat(keys.Take(15)).Append("poison"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, fail: c => c.Key == "poison"), HandlerOptions("own", maxAttempts: 2));
        var group = Unique("g");

        // The user's own consumer: their config and builder, subscribed by them; the wrapper only runs the loop.
        var config = ConsumerConfig(cluster, group);
        config.EnableAutoCommit = false;
        using var consumer = new ConsumerBuilder<byte[], byte[]>(config).Build();
        consumer.Subscribe(topic);
        using var deadLetters = cluster.CreateProducer();
        var options = new KafkaIdempotencyOptions { CommitEveryMessages = 20, CommitInterval = TimeSpan.FromMilliseconds(200), PollTimeout = TimeSpan.FromMilliseconds(50) };
        var outcomes = new ConcurrentBag<ProcessingOutcome>();
        using (var wrapper = new IdempotentKafkaConsumer<byte[], byte[]>(consumer, processor, options, deadLetters) { ResultObserver = r => outcomes.Add(r.Outcome) })
        {
            Assert.Same(consumer, wrapper.Consumer);
            await using var running = new RunningConsumer(wrapper);
            await WaitForCommittedToEndAsync(cluster, group, topic, 3, Timeout);
            await running.StopAsync();
        }

        // The wrapper does not close a consumer it did not build: it is still usable and sees the committed offsets.
        var committed = consumer.Committed(Enumerable.Range(0, 3).Select(p => new TopicPartition(topic, p)), TimeSpan.FromSeconds(10));
        Assert.Equal(cluster.EndOffsets(topic, 3), committed.OrderBy(c => c.Partition.Value).Select(c => c.Offset.Value));
        Assert.Equal(76L, committed.Sum(c => c.Offset.Value));
        consumer.Close();

        Assert.Equal(60L, await CountAsync(db, table));
        Assert.Equal(60L, await AppliedAsync(db, table));
        Assert.Equal(60, outcomes.Count(o => o == ProcessingOutcome.Processed));
        Assert.Equal(15, outcomes.Count(o => o == ProcessingOutcome.Duplicate));
        Assert.Equal([1L], cluster.EndOffsets(topic + ".dlq", 1));
    }

    [Fact]
    public async Task Message_that_fails_deserialization_is_dead_lettered_with_its_origin_and_the_partition_moves_on()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("unreadable");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 10).Select(i => $"u-{i}"), body: key => key == "u-4" ? "not json" : $"{{\"id\":\"{key}\"}}");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("unreadable"));
        var group = Unique("g");
        var options = new KafkaIdempotencyOptions<byte[], string> { CommitEveryMessages = 5, CommitInterval = TimeSpan.FromMilliseconds(200), PollTimeout = TimeSpan.FromMilliseconds(50) };
        options.Topics.Add(topic);
        var observer = new RecordingObserver();
        options.Observers.Add(observer);

        var outcomes = new ConcurrentBag<ProcessingResult>();
        using (var wrapper = IdempotentKafkaConsumer<byte[], string>.Create(ConsumerConfig(cluster, group), processor, options, b => b.SetValueDeserializer(new JsonOnly())))
        {
            wrapper.ResultObserver = outcomes.Add;
            using var stop = new CancellationTokenSource();
            var loop = wrapper.RunAsync(stop.Token);
            try
            {
                await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
            }
            finally
            {
                // Stop the loop before the client is disposed, also when the wait failed (disposing under a running
                // loop can crash the test host).
                await stop.CancelAsync();
                await loop.WaitAsync(Timeout, TestContext.Current.CancellationToken);
            }
        }

        // The unreadable message never reached the handler; the nine after and before it did, once each.
        Assert.Equal(9L, await CountAsync(db, table));
        Assert.Equal(9L, await AppliedAsync(db, table));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = 'u-4'"));
        Assert.Equal(9, outcomes.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(10L, (await cluster.CommittedOffsetsAsync(group, topic, 1))[0]);
        var unreadable = Assert.Single(observer.Seen, o => o.Outcome == ProcessingOutcome.Failed);
        Assert.Equal(("u-4", DeliveryAction.DeadLetter, true, KafkaDeadLetterHeaders.DeserializationFailed), (unreadable.Key, unreadable.Action, unreadable.Settled, unreadable.ReasonCode));
        Assert.Equal(10, observer.Seen.Count(o => o.Settled));

        var dead = ReadDeadLetters(cluster, topic + ".dlq", expected: 1).Single();
        string Header(string name) => Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(name));
        Assert.Equal("u-4", Encoding.UTF8.GetString(dead.Message.Key));
        Assert.Equal("not json", Encoding.UTF8.GetString(dead.Message.Value)); // the raw bytes, as they were on the topic
        Assert.Equal(KafkaDeadLetterHeaders.DeserializationFailed, Header(DeadLetterHeaders.ReasonCode));
        Assert.Equal(typeof(FormatException).FullName, Header(DeadLetterHeaders.ErrorType));
        Assert.Equal("1", Header(DeadLetterHeaders.Attempts));
        Assert.Equal("unreadable", Header(DeadLetterHeaders.Handler));
        Assert.Equal("u-4", Header(KafkaIdempotencyOptions.DefaultKeyHeader)); // the original headers travel along
        Assert.Equal(topic, Header(KafkaDeadLetterHeaders.OriginalTopic));
        Assert.Equal("0", Header(KafkaDeadLetterHeaders.OriginalPartition));
        Assert.Equal("4", Header(KafkaDeadLetterHeaders.OriginalOffset));
        var timestamp = long.Parse(Header(KafkaDeadLetterHeaders.OriginalTimestamp));
        Assert.InRange(DateTimeOffset.FromUnixTimeMilliseconds(timestamp), DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddMinutes(1));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(100)]
    public async Task Poison_message_is_not_committed_past_until_its_dead_letter_produce_succeeds(int batchSize)
    {
        using var cluster = MockKafkaCluster.Start();
        Assert.SkipUnless(cluster.IsMock, "refusing the dead-letter produce needs injected Produce errors (librdkafka's mock cluster)");
        var topic = Unique("dlq-down");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 10).Select(i => i == 3 ? "poison" : $"d-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, fail: c => c.Key == "poison"), HandlerOptions("dlq-down", maxAttempts: 1));
        var logger = new FakeLogger();
        var group = Unique("g");

        // The next 4 Produce requests are refused (not retriable): the first dead-letter attempts fail (a few more fail
        // locally while the producer refreshes the topic's metadata after the error).
        cluster.PushRequestErrors(MockKafkaCluster.ApiProduce, Enumerable.Repeat(ErrorCode.TopicAuthorizationFailed, 4).ToArray());
        await using var running = Start(
            cluster,
            group,
            processor,
            Options(topic, o => { o.BatchSize = batchSize; o.DeadLetterProduceBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(300), MaxDelay = TimeSpan.FromMilliseconds(300), UseJitter = false }; }),
            logger: logger);

        // While the dead-letter topic refuses it, the group's offset stops right at the poison message. One message at a
        // time, the messages behind it wait; batched (the default), those fetched with it committed their effects in the
        // same transaction, but their offsets wait behind the poison all the same.
        await WaitUntilAsync(
            async () => logger.Collector.GetSnapshot().Count(r => r.Id.Id == 2006) >= 2 && (await cluster.CommittedOffsetsAsync(group, topic, 1))[0] == 3,
            Timeout,
            async () => $"{logger.Collector.GetSnapshot().Count(r => r.Id.Id == 2006)} failed dead-letter produces, committed {(await cluster.CommittedOffsetsAsync(group, topic, 1))[0]}");
        await Task.Delay(300, TestContext.Current.CancellationToken);
        Assert.Equal(3L, (await cluster.CommittedOffsetsAsync(group, topic, 1))[0]);
        // Batched, the messages fetched with the poison commit their effects with it (how many were fetched together
        // depends on timing); one at a time, none behind it runs. Either way the offset waits at the poison.
        if (batchSize == 1)
        {
            Assert.Equal(3L, await CountAsync(db, table));
        }
        else
        {
            Assert.InRange(await CountAsync(db, table), 3L, 9L);
        }
        Assert.Equal([0L], cluster.EndOffsets(topic + ".dlq", 1));

        // The errors run out: the dead-letter lands once, and only then does the offset move past it.
        await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        await running.StopAsync();
        Assert.True(logger.Collector.GetSnapshot().Count(r => r.Id.Id == 2006) >= 4);
        Assert.Equal(9L, await CountAsync(db, table));
        Assert.Equal(9L, await AppliedAsync(db, table));
        var dead = ReadDeadLetters(cluster, topic + ".dlq", expected: 1).Single();
        Assert.Equal("3", Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(KafkaDeadLetterHeaders.OriginalOffset)));
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

        // Nothing more behind them.
        Assert.Null(consumer.Consume(TimeSpan.FromMilliseconds(300)));
        consumer.Close();
        Assert.Equal(expected, messages.Count);
        return messages;
    }

    [Fact]
    public async Task Batch_storing_offsets_records_no_position_past_an_unreadable_message_not_yet_dead_lettered()
    {
        using var cluster = MockKafkaCluster.Start();
        Assert.SkipUnless(cluster.IsMock, "holding the dead-letter back needs injected Produce errors (librdkafka's mock cluster)");
        var topic = Unique("unreadable-pos");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 10).Select(i => $"v-{i}"), body: key => key == "v-4" ? "not json" : $"{{\"id\":\"{key}\"}}");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("unreadable-pos"));
        var group = Unique("g");
        var options = new KafkaIdempotencyOptions<byte[], string>
        {
            BatchSize = 10,
            BatchMaxWait = TimeSpan.FromSeconds(2),
            OffsetStorage = KafkaOffsetStorage.BrokerAndStore,
            CommitEveryMessages = 1,
            CommitInterval = TimeSpan.FromMilliseconds(100),
            PollTimeout = TimeSpan.FromMilliseconds(50),
            DeadLetterProduceBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(200), MaxDelay = TimeSpan.FromMilliseconds(200), UseJitter = false },
        };
        options.Topics.Add(topic);

        // The dead-letter produce of the unreadable message (offset 4) keeps failing, so it stays unsettled after the
        // batch commits the nine readable ones.
        cluster.PushRequestErrors(MockKafkaCluster.ApiProduce, Enumerable.Repeat(ErrorCode.TopicAuthorizationFailed, 1000).ToArray());
        IReadOnlyDictionary<int, long> stored;
        long committed;
        using (var wrapper = IdempotentKafkaConsumer<byte[], string>.Create(ConsumerConfig(cluster, group), processor, options, b => b.SetValueDeserializer(new JsonOnly())))
        {
            using var stop = new CancellationTokenSource();
            var loop = wrapper.RunAsync(stop.Token);
            try
            {
                await WaitUntilAsync(async () => await CountAsync(db, table) == 9, Timeout, async () => $"{await CountAsync(db, table)} rows");
                await Task.Delay(500, TestContext.Current.CancellationToken); // some dead-letter attempts fail meanwhile
                stored = await store.LoadPositionsAsync(group, topic, [0], TestContext.Current.CancellationToken);
                committed = (await cluster.CommittedOffsetsAsync(group, topic, 1))[0];
            }
            finally
            {
                // Stop the loop before the client and the mock cluster are disposed, also when a wait above failed.
                await stop.CancelAsync();
                await loop.WaitAsync(Timeout, TestContext.Current.CancellationToken);
            }
        }

        // A restart (or the next owner after a rebalance) starts after the stored position: it must not pass offset 4,
        // which is neither processed nor dead-lettered yet. Neither may the broker commit.
        Assert.Equal(3L, stored[0]);
        Assert.True(committed <= 4, $"the broker commit ({committed}) passed the unsettled message");
        Assert.Equal(9L, await AppliedAsync(db, table));
    }

    /// <summary>A value deserializer that refuses anything that is not a JSON object.</summary>
    private sealed class JsonOnly : IDeserializer<string>
    {
        public string Deserialize(ReadOnlySpan<byte> data, bool isNull, SerializationContext context)
        {
            var text = Encoding.UTF8.GetString(data);
            return text.StartsWith('{') ? text : throw new FormatException("not a JSON object");
        }
    }

    [Fact]
    public async Task A_partition_worker_that_dies_of_an_unexpected_exception_stops_the_loop_loudly_instead_of_stalling()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("dies");
        cluster.CreateTopic(topic, 1);
        Produce(cluster, topic, Enumerable.Range(0, 5).Select(i => $"d-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("dies"));

        // The result observer runs on the partition's worker: throwing there stands in for a bug in the worker itself.
        var group = Unique("g");
        var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(ConsumerConfig(cluster, group), processor, Options(topic, o => o.BatchSize = 1));
        consumer.ResultObserver = _ => throw new InvalidProgramException("worker bug");
        using (consumer)
        {
            var loop = consumer.RunAsync(TestContext.Current.CancellationToken);

            var error = await Assert.ThrowsAsync<InvalidOperationException>(() => loop.WaitAsync(Timeout, TestContext.Current.CancellationToken));
            Assert.IsType<InvalidProgramException>(error.InnerException);
        }

        // The first message committed in the store before the worker died; the group's offset did not move past it.
        Assert.Equal(1L, await AppliedAsync(db, table));
        var committed = await cluster.CommittedOffsetsAsync(group, topic, 1);
        Assert.Equal(-1001L, Assert.Single(committed));
    }
}
