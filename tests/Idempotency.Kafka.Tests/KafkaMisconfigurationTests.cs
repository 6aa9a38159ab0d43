using System.Text;
using Confluent.Kafka;
using Idempotency.Health;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>Misconfigured stores and exact keys on a real Confluent.Kafka client against the mock cluster.</summary>
public sealed class KafkaMisconfigurationTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Missing_schema_commits_and_dead_letters_nothing_reports_unhealthy_and_resumes_once_created()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("misconf");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 40).Select(i => $"m-{i}"));
        var table = await db.CreateBusinessTableAsync();
        var store = new PostgresIdempotencyStore(db.DataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = "never_created_" + Guid.NewGuid().ToString("N")[..8] });
        var registry = new ConsumerHealthRegistry();
        var heartbeat = registry.Register("kafka:misconf", TimeProvider.System);
        var group = Unique("g");
        var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(ConsumerConfig(cluster, group), new IdempotentProcessor(store, Credit(table), HandlerOptions("misconf", maxAttempts: 2)), Options(topic));
        consumer.Heartbeat = heartbeat;
        await using var running = new RunningConsumer(consumer);

        await WaitUntilAsync(() => Task.FromResult(heartbeat.State == ConsumerState.Misconfigured), Timeout, () => Task.FromResult($"state {heartbeat.State}"));
        var report = await new ConsumerHealthCheck(registry, TimeProvider.System, TimeSpan.FromMinutes(5)).CheckHealthAsync(new(), TestContext.Current.CancellationToken);
        Assert.Equal(Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Unhealthy, report.Status);
        Assert.Contains("does not exist", report.Description, StringComparison.Ordinal);
        await Task.Delay(2_000, TestContext.Current.CancellationToken);
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
        Assert.Equal(0L, (await cluster.CommittedOffsetsAsync(group, topic, 2)).Where(o => o > 0).Sum());

        await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
        await running.StopAsync();

        Assert.Equal(40L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT max(applied) FROM {table}"));
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
    }

    [Fact]
    public async Task Two_different_binary_keys_are_never_one_key()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("binkeys");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        using (var producer = cluster.CreateProducer())
        {
            // Both are invalid UTF-8: a lossy decode turns each into the same replacement-character string.
            foreach (var key in new byte[][] { [0xFF, 0x01], [0xFE, 0x01] })
            {
                await producer.ProduceAsync(topic, new Message<byte[]?, byte[]?> { Value = Encoding.UTF8.GetBytes("{}"), Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, key } } }, TestContext.Current.CancellationToken);
            }
        }

        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();

        // Exact UTF-8 (the default): both are invalid keys, dead-lettered with that reason, none acknowledged as a duplicate.
        var outcomes = new List<ProcessingResult>();
        var group = Unique("g");
        await using (var running = Start(cluster, group, new IdempotentProcessor(store, Credit(table), HandlerOptions("bin")), Options(topic), r => { lock (outcomes) { outcomes.Add(r); } }))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
            await running.StopAsync();
        }

        Assert.Equal(2L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
        Assert.All(outcomes, r => Assert.Equal(ProcessingOutcome.InvalidKey, r.Outcome));

        // Hex: two keys, two effects.
        var hexGroup = Unique("g");
        await using (var running = Start(cluster, hexGroup, new IdempotentProcessor(store, Credit(table), HandlerOptions("bin")), Options(topic, o => o.KeyBytesEncoding = KeyBytesEncoding.Hex)))
        {
            await WaitForCommittedToEndAsync(cluster, hexGroup, topic, 1, Timeout);
            await running.StopAsync();
        }

        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        Assert.Equal(["fe01", "ff01"], (await Dapper.SqlMapper.QueryAsync<string>(connection, $"SELECT id FROM {table} ORDER BY id")).ToArray());
    }
}
