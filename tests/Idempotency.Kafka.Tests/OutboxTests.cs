using System.Text;
using Confluent.Kafka;
using Idempotency.Kafka.Outbox;
using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>The PostgreSQL outbox relayed to Kafka with <see cref="KafkaOutboxPublisher"/>, consumed downstream by the Kafka adapter.</summary>
public sealed class OutboxTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Handler_that_throws_sends_nothing_to_Kafka_and_the_one_that_succeeds_does()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("accepted");
        cluster.CreateTopic(topic, 1);
        var store = await db.CreateStoreAsync();
        var upstream = Upstream(store, topic, fail: key => key == "bad");

        var results = await upstream.ProcessBatchAsync([Incoming("good"), Incoming("bad")], Ct);
        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Failed], results.Select(r => r.Outcome));

        using var publisher = new KafkaOutboxPublisher(new ProducerConfig { BootstrapServers = cluster.BootstrapServers });
        var relay = new PostgresOutboxRelay(store, publisher);
        Assert.Equal(1, await relay.RelayOnceAsync(Ct));

        var messages = ReadAll(cluster, topic, 1);
        var only = Assert.Single(messages);
        Assert.Equal("good", Encoding.UTF8.GetString(only.Message.Key));
        var messageId = await db.ScalarAsync<Guid>($"SELECT message_id FROM {store.QualifiedOutboxTableName}");
        Assert.Equal(messageId.ToString(), Encoding.UTF8.GetString(only.Message.Headers.GetLastBytes(OutboxRecord.IdempotencyKeyHeader)));
        Assert.Equal("v1", Encoding.UTF8.GetString(only.Message.Headers.GetLastBytes("schema")));
    }

    [Fact]
    public async Task Relay_dying_after_publish_republishes_and_the_downstream_Kafka_consumer_applies_each_message_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("accepted");
        const int partitions = 3;
        cluster.CreateTopic(topic, partitions);
        var store = await db.CreateStoreAsync();
        await Upstream(store, topic).ProcessBatchAsync(Enumerable.Range(0, 60).Select(i => Incoming("order-" + i)).ToList(), Ct);

        using var kafka = new KafkaOutboxPublisher(new ProducerConfig { BootstrapServers = cluster.BootstrapServers });
        var relay = new PostgresOutboxRelay(store, new CrashAfterPublish(kafka, crashes: 1));
        await Assert.ThrowsAsync<InvalidOperationException>(() => relay.RelayOnceAsync(Ct));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL"));
        Assert.Equal(60, await relay.RelayOnceAsync(Ct));
        Assert.Equal(120L, cluster.EndOffsets(topic, partitions).Sum());

        var table = await ApplyDownstreamAsync(cluster, topic, partitions);

        Assert.Equal(60L, await CountAsync(db, table));
        Assert.Equal(60L, await AppliedAsync(db, table));
    }

    [Fact]
    public async Task Brokers_down_mid_run_lose_nothing_mark_nothing_sent_early_and_everything_arrives_once_after()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("accepted");
        const int partitions = 3;
        cluster.CreateTopic(topic, partitions);
        var store = await db.CreateStoreAsync();
        var upstream = Upstream(store, topic);
        using var kafka = new KafkaOutboxPublisher(new ProducerConfig { BootstrapServers = cluster.BootstrapServers, MessageTimeoutMs = 1500, ReconnectBackoffMaxMs = 200 });
        var counting = new CountingPublisher(kafka);
        var relay = new PostgresOutboxRelay(store, counting, new PostgresOutboxRelayOptions
        {
            PollInterval = TimeSpan.FromMilliseconds(200),
            FailureBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(500) },
        });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var run = relay.RunAsync(stop.Token);

        await upstream.ProcessBatchAsync(Enumerable.Range(0, 20).Select(i => Incoming("before-" + i)).ToList(), Ct);
        await WaitUntilAsync(async () => await PendingAsync(store) == 0, Timeout, async () => $"{await PendingAsync(store)} pending before the outage");

        for (var broker = 1; broker <= cluster.BrokerCount; broker++)
        {
            cluster.SetBrokerDown(broker);
        }

        await upstream.ProcessBatchAsync(Enumerable.Range(0, 30).Select(i => Incoming("during-" + i)).ToList(), Ct);
        await WaitUntilAsync(() => Task.FromResult(counting.Failures >= 2), Timeout, () => Task.FromResult($"{counting.Failures} failed publishes while down"));
        Assert.Equal(30L, await PendingAsync(store));

        for (var broker = 1; broker <= cluster.BrokerCount; broker++)
        {
            cluster.SetBrokerUp(broker);
        }

        await WaitUntilAsync(async () => await PendingAsync(store) == 0, Timeout, async () => $"{await PendingAsync(store)} pending after the outage");
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);

        // Timed-out batches may have reached the log before their reports failed: at least 50, each applied once.
        Assert.True(cluster.EndOffsets(topic, partitions).Sum() >= 50);
        var table = await ApplyDownstreamAsync(cluster, topic, partitions);

        Assert.Equal(50L, await CountAsync(db, table));
        Assert.Equal(50L, await AppliedAsync(db, table));
    }

    internal static IncomingMessage Incoming(string key) => new(key, Encoding.UTF8.GetBytes($"{{\"id\":\"{key}\"}}"));

    /// <summary>An upstream handler that sends one "accepted" message per input to <paramref name="topic"/>, keyed by the input key.</summary>
    internal static IdempotentProcessor Upstream(PostgresIdempotencyStore store, string topic, Func<string, bool>? fail = null) =>
        new(store, IdempotentHandler.Create((context, _) =>
        {
            context.AddOutgoing(new OutboxMessage(topic, context.Key, context.Body, new Dictionary<string, string> { ["schema"] = "v1" }));
            return fail?.Invoke(context.Key) == true ? throw new InvalidOperationException("handler failed") : ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = "upstream-" + topic, Retry = new RetryOptions { MaxAttempts = 1 } });

    private Task<long> PendingAsync(PostgresIdempotencyStore store) => db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL");

    internal sealed class CountingPublisher(IOutboxPublisher inner) : IOutboxPublisher
    {
        private int _failures;

        public int Failures => Volatile.Read(ref _failures);

        public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            try
            {
                await inner.PublishAsync(messages, cancellationToken);
            }
            catch (Exception) when (!cancellationToken.IsCancellationRequested)
            {
                Interlocked.Increment(ref _failures);
                throw;
            }
        }
    }

    /// <summary>Consumes the whole topic with the wrapped consumer into a fresh store; returns the business table it wrote.</summary>
    private async Task<string> ApplyDownstreamAsync(MockKafkaCluster cluster, string topic, int partitions)
    {
        var downstream = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var group = Unique("g");
        await using (var running = Start(cluster, group, new IdempotentProcessor(downstream, Credit(table), HandlerOptions("downstream")), Options(topic)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
            await running.StopAsync();
        }

        return table;
    }
}
