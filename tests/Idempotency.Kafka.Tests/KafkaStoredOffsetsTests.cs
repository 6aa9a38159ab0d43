using System.Collections.Concurrent;
using Confluent.Kafka;
using Idempotency.InMemory;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary><see cref="KafkaOffsetStorage.BrokerAndStore"/>: offsets written in the effects' transaction, sought to on assignment.</summary>
public sealed class KafkaStoredOffsetsTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Offsets_stored_with_the_effects_make_a_restart_after_a_lost_broker_commit_redo_nothing()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("stored");
        const int partitions = 3;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, 150).Select(i => $"s-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, Credit(table, onRun: _ => Interlocked.Increment(ref runs)), HandlerOptions("stored"));
        var group = Unique("g");

        // First life: every broker commit is lost (none is ever sent), as after a crash right after the database commits.
        await using (var first = Start(cluster, group, processor, Options(topic, o => { o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore; o.CommitEveryMessages = 1_000_000; o.CommitInterval = TimeSpan.FromHours(1); })))
        {
            first.Consumer.CommitOnShutdown = false;
            await WaitUntilAsync(async () => await CountAsync(db, table) == 150, Timeout, async () => $"{await CountAsync(db, table)} rows");
            await first.StopAsync();
        }

        Assert.All(await cluster.CommittedOffsetsAsync(group, topic, partitions), o => Assert.True(o < 0, $"offset {o} reached the broker"));
        var stored = await store.LoadPositionsAsync(group, topic, [0, 1, 2], TestContext.Current.CancellationToken);
        Assert.Equal(cluster.EndOffsets(topic, partitions).Select(end => end - 1), Enumerable.Range(0, partitions).Select(p => stored[p]));
        Assert.Equal(150, runs);

        // Second life: it starts after the stored positions, so the 150 are not even read again; 30 new ones run once each.
        Produce(cluster, topic, Enumerable.Range(150, 30).Select(i => $"s-{i}"));
        var outcomes = new ConcurrentBag<ProcessingOutcome>();
        await using (var second = Start(cluster, group, processor, Options(topic, o => o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore), r => outcomes.Add(r.Outcome)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        }

        Assert.Equal(180, runs);
        Assert.Equal(30, outcomes.Count);
        Assert.All(outcomes, o => Assert.Equal(ProcessingOutcome.Processed, o)); // no duplicate claim: nothing was re-read
        Assert.Equal(180L, await CountAsync(db, table));
        Assert.Equal(180L, await AppliedAsync(db, table));
        Assert.Equal(180L, (await cluster.CommittedOffsetsAsync(group, topic, partitions)).Sum()); // and Kafka has them too
    }

    [Fact]
    public async Task Committed_offset_ahead_of_the_store_after_a_dead_letter_wins_and_nothing_is_dead_lettered_twice()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("stored-dlq");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 9).Select(i => $"p-{i}").Append("poison"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, fail: c => c.Key == "poison"), HandlerOptions("stored-dlq", maxAttempts: 1));
        var group = Unique("g");
        var options = Options(topic, o => o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore);
        await using (var first = Start(cluster, group, processor, options))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        // The store's position is the last message that committed effects (8); Kafka's commit (10) covers the dead-letter too.
        Assert.Equal(8L, (await store.LoadPositionsAsync(group, topic, [0], TestContext.Current.CancellationToken))[0]);
        var outcomes = new ConcurrentBag<ProcessingOutcome>();
        await using (var second = Start(cluster, group, processor, Options(topic, o => o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore), r => outcomes.Add(r.Outcome)))
        {
            Produce(cluster, topic, ["p-10"]);
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal([ProcessingOutcome.Processed], outcomes);
        Assert.Equal([1L], cluster.EndOffsets(topic + ".dlq", 1));
        Assert.Equal(10L, await CountAsync(db, table));
    }

    [Fact]
    public async Task Two_consumers_storing_offsets_rebalance_mid_stream_and_apply_every_message_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("stored-rebalance");
        const int partitions = 4;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, 1_500).Select(i => $"r-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        // Slow enough that the stream is still mid-way when the second consumer joins, batched as it is by default.
        var processor = new IdempotentProcessor(store, Credit(table, onRun: _ => Thread.Sleep(10)), HandlerOptions("stored-rebalance"));
        var group = Unique("g");
        var results = new ConcurrentBag<ProcessingResult>();

        // Lazy broker commits that never fire: only the revoke commits to Kafka, so the new owner relies on the store.
        KafkaIdempotencyOptions Stored() => Options(topic, o => { o.OffsetStorage = KafkaOffsetStorage.BrokerAndStore; o.CommitEveryMessages = 1_000_000; o.CommitInterval = TimeSpan.FromHours(1); });
        await using var first = Start(cluster, group, processor, Stored(), results.Add);
        await WaitUntilAsync(async () => await CountAsync(db, table) >= 300, Timeout, async () => $"{await CountAsync(db, table)} rows");
        var joined = new ConcurrentBag<ProcessingResult>();
        await using var second = Start(cluster, group, processor, Stored(), r => { results.Add(r); joined.Add(r); });

        await WaitUntilAsync(async () => await CountAsync(db, table) == 1_500, Timeout, async () => $"{await CountAsync(db, table)} rows");
        await second.StopAsync();
        await first.StopAsync();

        Assert.Equal(1_500L, await AppliedAsync(db, table));
        Assert.Equal(1_500, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.All(results, r => Assert.True(r.IsCommitted));
        Assert.True(joined.Any(r => r.Outcome == ProcessingOutcome.Processed), "the second consumer never got a partition: no rebalance happened");

        // The revoked partitions' in-flight work finished and stored its position before the new owner read the store,
        // so the new owner started right after it: nothing was re-read, not even as a duplicate.
        Assert.DoesNotContain(results, r => r.Outcome == ProcessingOutcome.Duplicate);
        Assert.Contains(results, r => r.Message.Position is { } p && p.Offset > 0 && r.Outcome == ProcessingOutcome.Processed);
        var stored = await store.LoadPositionsAsync(group, topic, [0, 1, 2, 3], TestContext.Current.CancellationToken);
        Assert.Equal(cluster.EndOffsets(topic, partitions).Select(end => end - 1), Enumerable.Range(0, partitions).Select(p => stored[p]));
    }

    [Fact]
    public async Task Storing_offsets_is_refused_without_a_position_store_or_around_a_consumer_the_user_built()
    {
        var memory = new IdempotentProcessor(new InMemoryIdempotencyStore(), Credit("unused"), HandlerOptions("refused"));
        var postgres = new IdempotentProcessor(await db.CreateStoreAsync(), Credit("unused"), HandlerOptions("refused"));
        var options = new KafkaIdempotencyOptions { OffsetStorage = KafkaOffsetStorage.BrokerAndStore };
        var config = new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g" };
        using var producer = new ProducerBuilder<byte[]?, byte[]?>(new ProducerConfig { BootstrapServers = "127.0.0.1:1" }).Build();

        var noStore = Assert.Throws<ArgumentException>(() => IdempotentKafkaConsumer<byte[], byte[]>.Create(config, memory, options, deadLetterProducer: producer));
        Assert.Contains("IConsumerPositionStore", noStore.Message);
        using var own = new ConsumerBuilder<byte[], byte[]>(config).Build();
        var wrapped = Assert.Throws<ArgumentException>(() => new IdempotentKafkaConsumer<byte[], byte[]>(own, postgres, options, producer));
        Assert.Contains("OffsetStorage", wrapped.Message);
        var noGroup = Assert.Throws<ArgumentException>(() => IdempotentKafkaConsumer<byte[], byte[]>.Create(new ConsumerConfig { BootstrapServers = "127.0.0.1:1" }, postgres, options, deadLetterProducer: producer));
        Assert.Contains("GroupId", noGroup.Message);
        Assert.Contains("OffsetStorage", string.Join(" ", new KafkaIdempotencyOptions { OffsetStorage = (KafkaOffsetStorage)7 }.GetValidationErrors()));
        using var fine = IdempotentKafkaConsumer<byte[], byte[]>.Create(config, postgres, options, deadLetterProducer: producer);
    }

    [Fact]
    public async Task Storing_offsets_without_the_positions_table_fails_at_start_instead_of_dead_lettering_every_message()
    {
        var store = await db.CreateStoreAsync();
        await db.ScalarAsync<int>($"DROP TABLE {store.Options.Schema}.{store.Options.ConsumerPositionsTable}; SELECT 1");
        var processor = new IdempotentProcessor(store, Credit("unused"), HandlerOptions("no-table"));
        var options = new KafkaIdempotencyOptions { OffsetStorage = KafkaOffsetStorage.BrokerAndStore };
        options.Topics.Add("orders");
        using var producer = new ProducerBuilder<byte[]?, byte[]?>(new ProducerConfig { BootstrapServers = "127.0.0.1:1" }).Build();
        using var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g" }, processor, options, deadLetterProducer: producer);

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => consumer.RunAsync(TestContext.Current.CancellationToken));

        Assert.Contains("OffsetStorage", error.Message);
        Assert.IsType<Npgsql.PostgresException>(error.InnerException);
    }
}
