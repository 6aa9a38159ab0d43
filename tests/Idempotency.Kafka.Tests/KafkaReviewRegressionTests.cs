using System.Text;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>The Kafka adapter's review findings: dead-letter loops, a consumer without topics, a body selector that throws.</summary>
public sealed class KafkaReviewRegressionTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    [Theory]
    [InlineData(new[] { "orders" }, "orders")]
    [InlineData(new[] { "orders", "payments", "failed" }, "failed")]
    public void A_dead_letter_topic_that_is_subscribed_is_rejected_as_its_own_dead_letter_topic(string[] topics, string deadLetterTopic)
    {
        var options = new KafkaIdempotencyOptions { DeadLetterTopic = deadLetterTopic };
        foreach (var topic in topics)
        {
            options.Topics.Add(topic);
        }

        var error = Assert.Single(options.GetValidationErrors());
        Assert.Contains(nameof(KafkaIdempotencyOptions.DeadLetterTopic), error, StringComparison.Ordinal);
        Assert.Contains(nameof(KafkaIdempotencyOptions.Topics), error, StringComparison.Ordinal);
        Assert.Contains($"'{deadLetterTopic}'", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(new[] { "orders" }, null, null)]
    [InlineData(new[] { "orders", "payments" }, null, null)]
    [InlineData(new[] { "orders", "payments" }, "failed", null)]
    [InlineData(new[] { "orders", "orders.dlq" }, null, null)] // a chain, not a loop: orders.dlq's own go to orders.dlq.dlq
    [InlineData(new[] { "orders", "orders-retry" }, null, "-retry")]
    public void Dead_letter_topics_that_cannot_loop_are_accepted(string[] topics, string? deadLetterTopic, string? suffix)
    {
        var options = new KafkaIdempotencyOptions { DeadLetterTopic = deadLetterTopic };
        if (suffix is not null)
        {
            options.DeadLetterTopicSuffix = suffix;
        }

        foreach (var topic in topics)
        {
            options.Topics.Add(topic);
        }

        Assert.Empty(options.GetValidationErrors());
    }

    [Fact]
    public async Task Create_refuses_a_dead_letter_topic_that_is_subscribed()
    {
        var store = await db.CreateStoreAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), HandlerOptions("loop"));
        var options = Options("orders", o => o.DeadLetterTopic = "orders");
        var config = new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g" };

        var error = Assert.Throws<ArgumentException>(() => IdempotentKafkaConsumer<byte[], byte[]>.Create(config, processor, options));
        Assert.Contains(nameof(KafkaIdempotencyOptions.DeadLetterTopic), error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Starting_without_topics_and_without_a_subscription_throws_naming_Topics()
    {
        using var cluster = MockKafkaCluster.Start();
        var store = await db.CreateStoreAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), HandlerOptions("notopics"));
        var options = Options("unused");
        options.Topics.Clear();
        using var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(ConsumerConfig(cluster, Unique("g")), processor, options);

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => consumer.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains(nameof(KafkaIdempotencyOptions.Topics), error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Starting_without_topics_after_subscribing_the_consumer_yourself_processes_the_topic()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("self");
        cluster.CreateTopic(topic, 1);
        Produce(cluster, topic, Enumerable.Range(0, 5).Select(i => $"s-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var options = Options(topic);
        options.Topics.Clear();
        var group = Unique("g");
        var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(ConsumerConfig(cluster, group), new IdempotentProcessor(store, Credit(table), HandlerOptions("self")), options);
        consumer.Consumer.Subscribe(topic);
        await using var running = new RunningConsumer(consumer);

        await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        await running.StopAsync();

        Assert.Equal(5L, await CountAsync(db, table));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(10)]
    public async Task A_body_selector_that_throws_dead_letters_that_message_and_the_partition_moves_on(int batchSize)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("selector");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, ["good1", "bad", "good2"], body: key => key == "bad" ? "malformed" : $"{{\"id\":\"{key}\"}}");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var options = Options(topic, o =>
        {
            o.BatchSize = batchSize;
            o.BodySelector = r => r.Message.Value.Length > 0 && r.Message.Value[0] == (byte)'{' ? r.Message.Value : throw new FormatException("not a JSON object");
        });
        var group = Unique("g");
        await using (var running = Start(cluster, group, new IdempotentProcessor(store, Credit(table), HandlerOptions("selector")), options))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
            await running.StopAsync();
            Assert.True(running.Loop.IsCompletedSuccessfully);
        }

        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        Assert.Equal(["good1", "good2"], (await Dapper.SqlMapper.QueryAsync<string>(connection, $"SELECT id FROM {table} ORDER BY id")).ToArray());
        Assert.Equal(2L, await AppliedAsync(db, table));
        Assert.Equal(3L, (await cluster.CommittedOffsetsAsync(group, topic, 1))[0]);
        var dead = Assert.Single(ReadAll(cluster, topic + ".dlq", 1));
        string Header(string name) => Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes(name));
        Assert.Equal("malformed", Encoding.UTF8.GetString(dead.Message.Value));
        Assert.Equal(MessageDeserializationException.ReasonCode, Header(DeadLetterHeaders.ReasonCode));
        Assert.Equal(typeof(FormatException).FullName, Header(DeadLetterHeaders.ErrorType));
        Assert.Equal("not a JSON object", Header(DeadLetterHeaders.ErrorMessage));
        Assert.Equal("1", Header(KafkaDeadLetterHeaders.OriginalOffset));
    }

    [Fact]
    public async Task A_body_selector_that_throws_makes_the_step_dead_letter_the_message()
    {
        var store = await db.CreateStoreAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => { Interlocked.Increment(ref runs); return ValueTask.CompletedTask; }), HandlerOptions("stepselector"));
        var options = new KafkaIdempotencyOptions<byte[], byte[]> { BodySelector = _ => throw new FormatException("not a JSON object") };
        var step = new KafkaIdempotentStep<byte[], byte[]>(processor, options);
        var record = new ConsumeResult<byte[], byte[]>
        {
            TopicPartitionOffset = new TopicPartitionOffset("orders", 0, 7),
            Message = new Message<byte[], byte[]> { Key = "k"u8.ToArray(), Value = "malformed"u8.ToArray(), Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, "k"u8.ToArray() } } },
        };

        var result = await step.RunAsync(record, TestContext.Current.CancellationToken);

        Assert.Equal((DeliveryAction.DeadLetter, MessageDeserializationException.ReasonCode), (result.Action, result.ReasonCode));
        Assert.Equal(0, runs);
        Assert.Equal("malformed", Encoding.UTF8.GetString(step.CreateDeadLetter(record, result).Value!));
    }
}
