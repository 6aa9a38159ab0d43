using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

public sealed class IdempotentKafkaConsumerTests(PostgresFixture db, RedisFixture redis) : IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    // 10,000 messages one transaction each: generous, so that a machine at load 50+ still meets it (it only bounds a wait).
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(180);

    [Theory]
    [MemberData(nameof(BatchSizesAndStores), 1, 100)]
    public async Task Ten_thousand_messages_with_20_percent_reproduced_apply_each_key_once_and_commit_to_the_end(int batchSize, StoreKind kind)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("orders");
        const int partitions = 6;
        cluster.CreateTopic(topic, partitions);
        var unique = Enumerable.Range(0, 8_000).Select(i => $"order-{i}").ToList();
        var reproduced = Enumerable.Range(0, 2_000).Select(i => $"order-{(i * 7) % 8_000}");
        Produce(cluster, topic, unique.Concat(reproduced));

        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        var processor = new IdempotentProcessor(store.Store, store.Handler(), HandlerOptions("orders"));
        var outcomes = new ConcurrentDictionary<ProcessingOutcome, int>();
        var group = Unique("g");
        await using var running = Start(cluster, group, processor, Options(topic, o => o.BatchSize = batchSize), r => outcomes.AddOrUpdate(r.Outcome, 1, (_, n) => n + 1));

        await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        await running.StopAsync();

        Assert.Equal(new EffectCounts(8_000, 8_000, 1), await store.ReadAsync());
        Assert.Equal(8_000, outcomes.GetValueOrDefault(ProcessingOutcome.Processed));
        Assert.Equal(2_000, outcomes.GetValueOrDefault(ProcessingOutcome.Duplicate));
        Assert.Equal(cluster.EndOffsets(topic, partitions), await cluster.CommittedOffsetsAsync(group, topic, partitions));
        Assert.Equal(10_000L, (await cluster.CommittedOffsetsAsync(group, topic, partitions)).Sum());
    }

    [Theory]
    [MemberData(nameof(BatchSizesAndStores), 1, 10)]
    public async Task Poison_message_goes_to_the_dead_letter_topic_after_max_attempts_with_headers_and_the_partition_moves_on(int batchSize, StoreKind kind)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("payments");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        var keys = Enumerable.Range(0, 20).Select(i => i == 7 ? "poison" : $"pay-{i}").ToList();
        Produce(cluster, topic, keys);

        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        var poisonRuns = 0;
        var processor = new IdempotentProcessor(
            store.Store,
            store.Handler(fail: c => c.Key == "poison", onRun: c => { if (c.Key == "poison") { Interlocked.Increment(ref poisonRuns); } }),
            HandlerOptions("payments", maxAttempts: 3));
        var group = Unique("g");
        await using (var running = Start(cluster, group, processor, Options(topic, o => o.BatchSize = batchSize)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
            await running.StopAsync();
        }

        Assert.Equal(new EffectCounts(19, 19, 1), await store.ReadAsync());
        Assert.Equal(3, poisonRuns);

        using var dlq = new ConsumerBuilder<byte[], byte[]>(new ConsumerConfig { BootstrapServers = cluster.BootstrapServers, GroupId = Unique("dlq"), AutoOffsetReset = AutoOffsetReset.Earliest }).Build();
        dlq.Subscribe(topic + ".dlq");
        var dead = dlq.Consume(TimeSpan.FromSeconds(20));
        Assert.NotNull(dead);
        string Header(string name) => Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(name));
        Assert.Equal("poison", Encoding.UTF8.GetString(dead.Message.Key));
        Assert.Equal("{\"id\":\"poison\",\"amount\":5}", Encoding.UTF8.GetString(dead.Message.Value));
        Assert.Equal(DeliveryPolicy.HandlerFailed, Header(DeadLetterHeaders.ReasonCode));
        Assert.Equal(typeof(InvalidOperationException).FullName, Header(DeadLetterHeaders.ErrorType));
        Assert.Contains("poison message poison", Header(DeadLetterHeaders.ErrorMessage));
        Assert.Equal("3", Header(DeadLetterHeaders.Attempts));
        Assert.Equal("payments", Header(DeadLetterHeaders.Handler));
        Assert.Equal("poison", Header(DeadLetterHeaders.Key));
        Assert.Equal("poison", Header(KafkaIdempotencyOptions.DefaultKeyHeader));
        Assert.Equal(topic, Header(KafkaDeadLetterHeaders.OriginalTopic));
        Assert.Equal("0", Header(KafkaDeadLetterHeaders.OriginalPartition));
        Assert.Equal("7", Header(KafkaDeadLetterHeaders.OriginalOffset));
        Assert.True(long.Parse(Header(KafkaDeadLetterHeaders.OriginalTimestamp)) > 0);
        Assert.Null(dlq.Consume(TimeSpan.FromMilliseconds(500)));
        dlq.Close();
    }

    [Fact]
    public async Task Message_without_a_key_is_dead_lettered_at_once_with_reason_invalid_key()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("nokey");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        using (var producer = cluster.CreateProducer())
        {
            await producer.ProduceAsync(topic, new Message<byte[]?, byte[]?> { Value = "{}"u8.ToArray() }, TestContext.Current.CancellationToken);
        }

        Produce(cluster, topic, ["k-1"]);
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("nokey"));
        var group = Unique("g");
        await using (var running = Start(cluster, group, processor, Options(topic)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal(1L, await CountAsync(db, table));
        using var dlq = new ConsumerBuilder<Ignore, byte[]>(new ConsumerConfig { BootstrapServers = cluster.BootstrapServers, GroupId = Unique("dlq"), AutoOffsetReset = AutoOffsetReset.Earliest }).Build();
        dlq.Subscribe(topic + ".dlq");
        var dead = dlq.Consume(TimeSpan.FromSeconds(20));
        Assert.NotNull(dead);
        Assert.Equal(DeliveryPolicy.InvalidKey, Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(DeadLetterHeaders.ReasonCode)));
        Assert.Equal("1", Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(DeadLetterHeaders.Attempts)));
        dlq.Close();
    }

    [Fact]
    public async Task Key_selector_can_key_on_the_message_key_instead_of_the_header()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("bykey");
        cluster.CreateTopic(topic, 2);
        using (var producer = cluster.CreateProducer())
        {
            foreach (var key in new[] { "a", "b", "a", "c", "b" })
            {
                producer.Produce(topic, new Message<byte[]?, byte[]?> { Key = Encoding.UTF8.GetBytes(key), Value = Encoding.UTF8.GetBytes("v-" + key) });
            }

            producer.Flush(TimeSpan.FromSeconds(10));
        }

        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("bykey"));
        var group = Unique("g");
        await using (var running = Start(cluster, group, processor, Options(topic, o => o.KeySelector = r => Encoding.UTF8.GetString(r.Message.Key))))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
        }

        Assert.Equal(3L, await CountAsync(db, table));
        Assert.Equal(3L, await AppliedAsync(db, table));
    }

    [Fact]
    public void Options_validation_errors_name_each_bad_setting()
    {
        var options = new KafkaIdempotencyOptions<byte[], byte[]>
        {
            KeyHeader = "",
            DeadLetterTopicSuffix = "",
            Concurrency = 0,
            MaxBufferedMessagesPerPartition = 0,
            BatchSize = 0,
            BatchMaxWait = TimeSpan.FromMinutes(5),
            CommitEveryMessages = 0,
            CommitInterval = TimeSpan.Zero,
            RevokeTimeout = TimeSpan.FromMinutes(-1),
            ShutdownTimeout = TimeSpan.FromHours(2),
            PollTimeout = TimeSpan.Zero,
            DeadLetterProduceBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromSeconds(2), MaxDelay = TimeSpan.FromSeconds(1) },
        };
        options.Topics.Add(" ");

        var errors = string.Join("\n", options.GetValidationErrors());
        foreach (var name in new[]
        {
            "Topics[0]", "KeyHeader", "DeadLetterTopicSuffix", "Concurrency", "MaxBufferedMessagesPerPartition", "BatchSize",
            "BatchMaxWait", "CommitEveryMessages", "CommitInterval", "RevokeTimeout", "ShutdownTimeout", "PollTimeout", "DeadLetterProduceBackoff.MaxDelay",
        })
        {
            Assert.Contains(name, errors);
        }

        Assert.Empty(new KafkaIdempotencyOptions<byte[], byte[]>().GetValidationErrors());
        var ex = Assert.Throws<ArgumentException>(options.Validate);
        Assert.Contains("Concurrency must be between 1 and 1024 (was 0)", ex.Message);

#pragma warning disable CS0618 // The old name still works.
        Assert.Equal(5, new KafkaIdempotencyOptions { MaxConcurrentPartitions = 5 }.Concurrency);
#pragma warning restore CS0618
    }

    [Fact]
    public async Task Consumer_refuses_invalid_options_and_a_value_type_without_a_body_selector()
    {
        var store = await db.CreateStoreAsync();
        var processor = new IdempotentProcessor(store, Credit("unused"), HandlerOptions("v"));
        var config = new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g" };
        using var producer = new ProducerBuilder<byte[]?, byte[]?>(new ProducerConfig { BootstrapServers = "127.0.0.1:1" }).Build();

        var bad = Assert.Throws<ArgumentException>(() => IdempotentKafkaConsumer<byte[], byte[]>.Create(config, processor, new KafkaIdempotencyOptions { BatchSize = 0 }, deadLetterProducer: producer));
        Assert.Contains("BatchSize", bad.Message);
        var noBody = Assert.Throws<ArgumentException>(() => IdempotentKafkaConsumer<string, int>.Create(config, processor, new KafkaIdempotencyOptions(), deadLetterProducer: producer));
        Assert.Contains("BodySelector", noBody.Message);
        Assert.Contains("BodySelector", string.Join(" ", new KafkaIdempotencyOptions<string, int>().GetValidationErrors()));
        Assert.Empty(new KafkaIdempotencyOptions<string, int> { BodySelector = r => BitConverter.GetBytes(r.Message.Value) }.GetValidationErrors());
    }

    /// <summary>Each batch size with each store: the scenarios' guarantees must not depend on the store.</summary>
    public static TheoryData<int, StoreKind> BatchSizesAndStores(int single, int batched) => new()
    {
        { single, StoreKind.Postgres },
        { batched, StoreKind.Postgres },
        { single, StoreKind.Redis },
        { batched, StoreKind.Redis },
    };
}
