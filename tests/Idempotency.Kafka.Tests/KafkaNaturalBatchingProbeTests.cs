using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Dapper;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>
/// Adversarial probes of the default (naturally batching) Kafka consumer: one ready group mixing a poison message,
/// copies of a key (same and changed payload), a message without a key and one with an oversized key; store backends
/// killed under running batches; a rebalance whose revoke has to abort batches in flight.
/// </summary>
public sealed class KafkaNaturalBatchingProbeTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    private async Task<string> CreateLogAsync()
    {
        var log = $"{db.Schema}.log_{Guid.NewGuid():N}"[..40];
        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        await connection.ExecuteAsync($"CREATE TABLE {log} (seq bigserial PRIMARY KEY, id text NOT NULL, part int NOT NULL, off bigint NOT NULL)");
        return log;
    }

    /// <summary>Credits the key's row and logs (key, partition, offset) in the store's transaction.</summary>
    private static IIdempotentMessageHandler Logged(string table, string log, Func<MessageContext, CancellationToken, Task>? before = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            if (before is not null)
            {
                await before(context, ct);
            }

            await Credit(table).HandleAsync(context, ct);
            var native = (ConsumeResult<byte[], byte[]>)context.Message.Native!;
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {log} (id, part, off) VALUES (@id, @part, @off)",
                new { id = context.Key, part = native.Partition.Value, off = native.Offset.Value },
                context.GetNpgsqlTransaction());
        });

    /// <summary>Produces bodies without a Kafka key, each with its idempotency-key header when it has one.</summary>
    private static void ProduceRaw(MockKafkaCluster cluster, string topic, IEnumerable<(string? HeaderKey, string Body)> messages) =>
        Produce(cluster, topic, messages.Select(m => new Message<byte[]?, byte[]?>
        {
            Key = null,
            Value = Encoding.UTF8.GetBytes(m.Body),
            Headers = m.HeaderKey is null ? [] : new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, Encoding.UTF8.GetBytes(m.HeaderKey) } },
        }));

    /// <summary>Every ordered pair of log rows of one partition is in offset order, and no key has two log rows.</summary>
    private async Task AssertLogInOffsetOrderOnceAsync(string log)
    {
        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        var rows = (await connection.QueryAsync<(string Id, int Part, long Off)>($"SELECT id, part, off FROM {log} ORDER BY seq")).ToList();
        Assert.Equal(rows.Count, rows.Select(r => r.Id).Distinct().Count());
        foreach (var partition in rows.GroupBy(r => r.Part))
        {
            var offsets = partition.Select(r => r.Off).ToList();
            Assert.Equal(offsets.Order(), offsets);
        }
    }

    [Theory]
    [InlineData(PayloadMismatchPolicy.TreatAsDuplicate)]
    [InlineData(PayloadMismatchPolicy.Fail)]
    [InlineData(PayloadMismatchPolicy.Quarantine)]
    public async Task One_ready_group_with_a_poison_copies_of_keys_and_bad_keys_settles_each_once_in_order(PayloadMismatchPolicy policy)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("probe-mix");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        var messages = new List<(string? Key, string Body)>();
        for (var i = 0; i < 120; i++)
        {
            messages.Add(($"m-{i:D3}", $"{{\"i\":{i}}}"));
            switch (i)
            {
                case 10: messages.Add(("dup-a", "{\"v\":1}")); break;
                case 20: messages.Add(("chg-b", "{\"v\":1}")); break;
                case 30: messages.Add(("dup-a", "{\"v\":1}")); break; // a producer retry: same payload
                case 40: messages.Add(("chg-b", "{\"v\":2}")); break; // same key, another payload
                case 50: messages.Add((null, "{\"nokey\":1}")); break;
                case 60: messages.Add((new string('x', 600), "{\"big\":1}")); break;
                case 70: messages.Add(("poison", "{\"p\":1}")); break;
            }
        }

        ProduceRaw(cluster, topic, messages);
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var log = await CreateLogAsync();
        var runs = new ConcurrentDictionary<string, int>();
        var handler = Logged(table, log, (context, _) =>
        {
            runs.AddOrUpdate(context.Key!, 1, (_, n) => n + 1);
            return context.Key == "poison" ? throw new InvalidOperationException("poison") : Task.CompletedTask;
        });
        var options = HandlerOptions("probe-mix", maxAttempts: 3);
        options.PayloadMismatchPolicy = policy;
        var kafkaOptions = Options(topic);
        var observer = new RecordingObserver();
        kafkaOptions.Observers.Add(observer);
        var group = Unique("g");

        await using (var running = Start(cluster, group, new IdempotentProcessor(store, handler, options), kafkaOptions))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
            await running.StopAsync();
        }

        // 120 m-keys, dup-a, chg-b: each applied exactly once; the poison never.
        Assert.Equal(122L, await CountAsync(db, table));
        Assert.Equal(122L, await AppliedAsync(db, table));
        Assert.Equal(3, runs["poison"]);
        await AssertLogInOffsetOrderOnceAsync(log);

        var dead = ReadAll(cluster, topic + ".dlq", 1);
        var reasons = dead.Select(d => Encoding.UTF8.GetString(d.Message.Headers.GetLastBytes(DeadLetterHeaders.ReasonCode))).Order().ToList();
        var expected = new List<string> { DeliveryPolicy.HandlerFailed, DeliveryPolicy.InvalidKey, DeliveryPolicy.InvalidKey };
        if (policy != PayloadMismatchPolicy.TreatAsDuplicate)
        {
            expected.Add(DeliveryPolicy.PayloadMismatch);
        }

        Assert.Equal(expected.Order(), reasons);
        var poisonSeen = observer.Seen.Where(o => o.Key == "poison").ToList();
        Assert.Equal(3, poisonSeen.Count);
        Assert.Equal(1, poisonSeen.Count(o => o.Settled));
        Assert.Equal(policy == PayloadMismatchPolicy.Fail ? 3 : 1, observer.Seen.Count(o => o.Key == "chg-b" && o.Outcome != ProcessingOutcome.Processed));
    }

    [Fact]
    public async Task Store_backends_terminated_under_running_batches_spend_no_attempt_dead_letter_nothing_and_apply_each_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("probe-kill");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 600).Select(i => $"t-{i:D3}"));

        var application = Unique("probe-store");
        await using var storeSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(db.ConnectionString) { ApplicationName = application, MaxPoolSize = 16 }.ConnectionString);
        var store = new PostgresIdempotencyStore(storeSource, new PostgresIdempotencyStoreOptions
        {
            Schema = db.Schema,
            Table = "processed_" + Guid.NewGuid().ToString("N")[..8],
            OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8],
        });
        await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        var table = await db.CreateBusinessTableAsync();
        var log = await CreateLogAsync();

        // MaxAttempts = 1: a single attempt spent on a store error dead-letters the message.
        var handler = Logged(table, log, (_, ct) => Task.Delay(4, ct));
        var observer = new RecordingObserver();
        var kafkaOptions = Options(topic);
        kafkaOptions.Observers.Add(observer);
        var group = Unique("g");
        var kills = 0;
        await using (var running = Start(cluster, group, new IdempotentProcessor(store, handler, HandlerOptions("probe-kill", maxAttempts: 1)), kafkaOptions))
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) >= 20, Timeout, () => Task.FromResult("20 applied"));
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(6);
            while (DateTime.UtcNow < until && await CountAsync(db, table) < 560)
            {
                kills += await db.ScalarAsync<int>("SELECT count(*)::int FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = @application AND pid <> pg_backend_pid()) t", new { application });
                await Task.Delay(Random.Shared.Next(50, 300), TestContext.Current.CancellationToken);
            }

            await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
            await running.StopAsync();
        }

        Assert.True(kills > 0, "no store backend was terminated");
        await AssertStoreErrorsCostNothingAsync(cluster, topic, table, log, observer);
    }

    [Fact]
    public async Task Store_table_privileges_revoked_under_running_batches_spend_no_attempt_dead_letter_nothing_and_apply_each_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("probe-revoke");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 600).Select(i => $"v-{i:D3}"));
        var storeTable = "processed_" + Guid.NewGuid().ToString("N")[..8];
        var store = await db.CreateStoreAsync(storeTable);
        var table = await db.CreateBusinessTableAsync();
        var log = await CreateLogAsync();
        var observer = new RecordingObserver();
        var kafkaOptions = Options(topic);
        kafkaOptions.Observers.Add(observer);
        var group = Unique("g");
        await using (var running = Start(cluster, group, new IdempotentProcessor(store, Logged(table, log, (_, ct) => Task.Delay(5, ct)), HandlerOptions("probe-revoke", maxAttempts: 1)), kafkaOptions))
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) >= 50, Timeout, () => Task.FromResult("50 applied"));
            await using (var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
            {
                await connection.ExecuteAsync($"REVOKE ALL ON {db.Schema}.{storeTable} FROM CURRENT_USER");
            }

            // A batch already past its claim may still commit; after that nothing moves until the grant. Waits for the
            // count to hold still for 3 s (a loaded machine stretches the batches in flight), then checks it stopped short.
            var during = await CountAsync(db, table);
            var stillSince = DateTime.UtcNow;
            var deadline = DateTime.UtcNow + Timeout;
            while (DateTime.UtcNow - stillSince < TimeSpan.FromSeconds(3) && DateTime.UtcNow < deadline)
            {
                await Task.Delay(250, TestContext.Current.CancellationToken);
                var now = await CountAsync(db, table);
                if (now != during)
                {
                    (during, stillSince) = (now, DateTime.UtcNow);
                }
            }

            Assert.True(during < 600, $"revoking the store's privileges did not stop processing ({during} rows)");
            await using (var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
            {
                await connection.ExecuteAsync($"GRANT ALL ON {db.Schema}.{storeTable} TO CURRENT_USER");
            }

            await WaitForCommittedToEndAsync(cluster, group, topic, 2, Timeout);
            await running.StopAsync();
        }

        await AssertStoreErrorsCostNothingAsync(cluster, topic, table, log, observer);
    }

    /// <summary>All 600 messages applied once, in offset order; no handler failure reported; nothing dead-lettered.</summary>
    private async Task AssertStoreErrorsCostNothingAsync(MockKafkaCluster cluster, string topic, string table, string log, RecordingObserver observer)
    {
        Assert.Equal(600L, await CountAsync(db, table));
        Assert.Equal(600L, await AppliedAsync(db, table));
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
        Assert.DoesNotContain(observer.Seen, o => o.Outcome == ProcessingOutcome.Failed);
        await AssertLogInOffsetOrderOnceAsync(log);
    }

    [Fact]
    public async Task Rebalance_that_aborts_batches_in_flight_never_commits_past_an_effect_and_applies_each_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("probe-rebalance");
        const int partitions = 4;
        cluster.CreateTopic(topic, partitions);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 1_200).Select(i => $"b-{i:D4}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var log = await CreateLogAsync();
        var failedOnce = new ConcurrentDictionary<string, bool>();

        // 25 ms a message: a batch of 100 takes 2.5 s, a revoke (1 s timeout) aborts it mid-transaction. Every 97th key
        // fails once, so batches are also cut into prefixes when the revoke lands.
        var aborted = 0;
        var handler = Logged(table, log, async (context, ct) =>
        {
            try
            {
                await Task.Delay(25, ct);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref aborted);
                throw;
            }

            if (int.Parse(context.Key!.AsSpan(2)) % 97 == 0 && failedOnce.TryAdd(context.Key!, true))
            {
                throw new InvalidOperationException("fails once " + context.Key);
            }
        });
        var processor = new IdempotentProcessor(store, handler, HandlerOptions("probe-rebalance"));
        var group = Unique("g");
        void Configure(KafkaIdempotencyOptions<byte[], byte[]> o) => o.RevokeTimeout = TimeSpan.FromSeconds(1);

        var violations = new ConcurrentQueue<string>();
        using var watching = new CancellationTokenSource();
        var watcher = Task.Run(async () =>
        {
            while (!watching.IsCancellationRequested)
            {
                // Committed offsets first, then effects: an offset committed before its effect shows as a violation.
                var committed = await cluster.CommittedOffsetsAsync(group, topic, partitions);
                await using var connection = await db.DataSource.OpenConnectionAsync(CancellationToken.None);
                var applied = (await connection.QueryAsync<(int Part, long Off)>($"SELECT part, off FROM {log}")).ToLookup(r => r.Part, r => r.Off);
                for (var p = 0; p < partitions; p++)
                {
                    var offsets = applied[p].ToHashSet();
                    for (var o = 0L; o < committed[p]; o++)
                    {
                        if (!offsets.Contains(o))
                        {
                            violations.Enqueue($"partition {p}: committed {committed[p]} but offset {o} has no effect");
                            break;
                        }
                    }
                }

                await Task.Delay(100, CancellationToken.None);
            }
        }, TestContext.Current.CancellationToken);

        await using (var first = Start(cluster, group, processor, Options(topic, Configure)))
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) >= 100, Timeout, () => Task.FromResult("100 applied"));
            await using (var second = Start(cluster, group, processor, Options(topic, Configure)))
            {
                await WaitUntilAsync(async () => await CountAsync(db, table) >= 500, Timeout, () => Task.FromResult("500 applied"));
                await second.StopAsync();
            }

            await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
            await first.StopAsync();
        }

        watching.Cancel();
        await watcher;
        Assert.Empty(violations);
        Assert.True(Volatile.Read(ref aborted) > 0, "no revoke aborted a batch in flight: nothing was tested");
        Assert.Equal(1_200L, await CountAsync(db, table));
        Assert.Equal(1_200L, await AppliedAsync(db, table));
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
        await AssertLogInOffsetOrderOnceAsync(log);
    }
}
