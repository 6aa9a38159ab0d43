using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>
/// The default consumer batches naturally: messages of one partition already fetched share one store transaction,
/// through the ordinary per-message handler, in offset order; a failing one is isolated; a stop loses nothing.
/// </summary>
public sealed class KafkaNaturalBatchingTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    private async Task<(string Table, string Log, IIdempotentMessageHandler Handler)> LoggingHandlerAsync(Func<MessageContext, bool>? fail = null, TimeSpan? pause = null)
    {
        var table = await db.CreateBusinessTableAsync();
        var log = $"{db.Schema}.log_{Guid.NewGuid():N}"[..40];
        await using (var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
        {
            await connection.ExecuteAsync($"CREATE TABLE {log} (seq bigserial PRIMARY KEY, id text NOT NULL, part int NOT NULL, tx bigint NOT NULL)");
        }

        var credit = Credit(table, fail);
        return (table, log, IdempotentHandler.Create(async (context, ct) =>
        {
            if (pause is { } delay)
            {
                await Task.Delay(delay, ct);
            }

            await credit.HandleAsync(context, ct);
            var partition = ((Confluent.Kafka.ConsumeResult<byte[], byte[]>)context.Message.Native!).Partition.Value;
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {log} (id, part, tx) VALUES (@id, @partition, txid_current())", new { id = context.Key, partition }, context.GetNpgsqlTransaction());
        }));
    }

    [Fact]
    public async Task Fetched_messages_share_transactions_a_failing_one_is_isolated_and_partition_order_holds()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("natural");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 400).Select(i => $"n-{i:D3}"));
        var store = await db.CreateStoreAsync();
        var (table, log, handler) = await LoggingHandlerAsync(fail: context => context.Key == "n-200");
        var group = Unique("g");

        await using (var running = Start(cluster, group, new IdempotentProcessor(store, handler, HandlerOptions("natural", maxAttempts: 2)), Options(topic)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
            await running.StopAsync();
        }

        Assert.Equal(399L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT max(applied) FROM {table}"));
        Assert.Equal(1L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        var applied = (await connection.QueryAsync<(string Id, int Part, long Tx)>($"SELECT id, part, tx FROM {log} ORDER BY seq")).ToList();

        // Within a partition the keys commit in produce (offset) order; the keys were produced in ascending order.
        foreach (var partition in applied.GroupBy(a => a.Part))
        {
            var ids = partition.Select(a => a.Id).ToList();
            Assert.Equal(ids.Order(StringComparer.Ordinal), ids);
        }

        var transactions = applied.Select(a => a.Tx).Distinct().Count();
        Assert.True(transactions <= 399 / 4, $"{transactions} transactions for 399 messages: not batched");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(100)]
    public async Task A_message_that_fails_once_in_the_middle_of_a_ready_group_takes_effect_before_the_later_ones(int batchSize)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("natural-retry");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 300).Select(i => $"r-{i:D3}"));
        var store = await db.CreateStoreAsync();
        var failures = 0;
        var (table, log, handler) = await LoggingHandlerAsync(fail: context => context.Key == "r-150" && Interlocked.Increment(ref failures) == 1);
        var group = Unique("g");

        await using (var running = Start(cluster, group, new IdempotentProcessor(store, handler, HandlerOptions("natural-retry")), Options(topic, o => o.BatchSize = batchSize == 0 ? o.BatchSize : batchSize)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
            await running.StopAsync();
        }

        Assert.True(failures >= 2, "r-150 did not fail once and run again");
        Assert.Equal(300L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT max(applied) FROM {table}"));
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);

        // The retried message took effect after r-149 and before r-151: the partition's effects are in offset order.
        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        var applied = (await connection.QueryAsync<(string Id, long Tx)>($"SELECT id, tx FROM {log} ORDER BY seq")).ToList();
        Assert.Equal(Enumerable.Range(0, 300).Select(i => $"r-{i:D3}"), applied.Select(a => a.Id));
        var transactions = applied.Select(a => a.Tx).Distinct().Count();
        Assert.True(transactions <= 300 / 4, $"{transactions} transactions for 300 messages: not batched");
    }

    [Fact]
    public async Task A_stop_in_the_middle_loses_nothing_and_the_next_consumer_applies_each_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("natural-stop");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dlq", 1);
        // 600 messages at 20 ms each on 2 partitions: a batch of 100 takes 2 s, the whole stream about 6 s, so a stop
        // after the first commits lands mid-stream on a quiet machine as on a loaded one.
        Produce(cluster, topic, Enumerable.Range(0, 600).Select(i => $"s-{i:D3}"));
        var store = await db.CreateStoreAsync();
        var (table, _, handler) = await LoggingHandlerAsync(pause: TimeSpan.FromMilliseconds(20));
        var group = Unique("g");
        var processor = new IdempotentProcessor(store, handler, HandlerOptions("natural-stop"));

        await using (var first = Start(cluster, group, processor, Options(topic)))
        {
            await WaitUntilAsync(async () => await db.ScalarAsync<long>($"SELECT count(*) FROM {table}") >= 30, Timeout, () => Task.FromResult("30 applied"));
            await first.StopAsync();
        }

        // No committed offset passes a message without its effect.
        var rows = await db.ScalarAsync<long>($"SELECT count(*) FROM {table}");
        var committed = (await cluster.CommittedOffsetsAsync(group, topic, 2)).Where(o => o > 0).Sum();
        Assert.True(committed <= rows, $"committed {committed} offsets with {rows} effects");
        Assert.True(rows < 600, "the stop came too late to test anything");

        await using (var second = Start(cluster, group, processor, Options(topic)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
            await second.StopAsync();
        }

        Assert.Equal(600L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT max(applied) FROM {table}"));
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
    }
}
