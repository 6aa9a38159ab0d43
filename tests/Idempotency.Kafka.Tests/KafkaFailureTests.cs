using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;
using Confluent.Kafka;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

public sealed class KafkaFailureTests(PostgresFixture db, RedisFixture redis) : IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Consumer_killed_after_the_database_commit_and_before_the_offset_commit_redoes_nothing_and_loses_nothing()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("killed");
        cluster.CreateTopic(topic, 3);
        Produce(cluster, topic, Enumerable.Range(0, 300).Select(i => $"k-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var group = Unique("g");

        // First life: never commits offsets on its own, so every message is committed in the database and not in Kafka.
        using (var first = TestHost.Start(cluster, topic, group, db, store, table, commitEvery: 1_000_000, commitIntervalMs: 3_600_000))
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) == 300, Timeout, async () => $"{await CountAsync(db, table)} rows; host said: {first.Output}");
            Assert.All(await cluster.CommittedOffsetsAsync(group, topic, 3), o => Assert.True(o < 0, $"offset {o} committed before the kill"));
            first.Kill();
        }

        Produce(cluster, topic, Enumerable.Range(300, 100).Select(i => $"k-{i}"));

        // Second life: re-reads everything from the start; the 300 are duplicates, the 100 are new.
        using var second = TestHost.Start(cluster, topic, group, db, store, table, commitEvery: 10, commitIntervalMs: 100);
        await WaitForCommittedToEndAsync(cluster, group, topic, 3, Timeout);
        await second.StopGracefullyAsync();

        Assert.Equal(400L, await CountAsync(db, table));
        Assert.Equal(400L, await AppliedAsync(db, table));
        Assert.Equal(300, second.Count("Duplicate"));
        Assert.Equal(100, second.Count("Processed"));
    }

    [Fact]
    public async Task Two_consumers_in_one_group_with_a_rebalance_in_the_middle_apply_every_message_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("rebalance");
        const int partitions = 6;
        cluster.CreateTopic(topic, partitions);
        Produce(cluster, topic, Enumerable.Range(0, 4_000).Select(i => $"r-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();

        // A slow handler keeps the first consumer busy long enough for the second to join half way.
        var processor = new IdempotentProcessor(store, Credit(table, onRun: _ => Thread.Sleep(1)), HandlerOptions("rebalance"));
        var group = Unique("g");
        var a = new ConcurrentBag<ProcessingResult>();
        var b = new ConcurrentBag<ProcessingResult>();
        await using var first = Start(cluster, group, processor, Options(topic), a.Add);
        await WaitUntilAsync(async () => await CountAsync(db, table) >= 800, Timeout, async () => $"{await CountAsync(db, table)} rows");
        await using var second = Start(cluster, group, processor, Options(topic), b.Add);

        await WaitForCommittedToEndAsync(cluster, group, topic, partitions, Timeout);
        await second.StopAsync();
        await first.StopAsync();

        Assert.Equal(4_000L, await CountAsync(db, table));
        Assert.Equal(4_000L, await AppliedAsync(db, table));
        var all = a.Concat(b).ToList();
        Assert.Equal(4_000, all.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.True(b.Any(r => r.Outcome == ProcessingOutcome.Processed), "the second consumer never got a partition: no rebalance happened");
        Assert.All(all, r => Assert.True(r.IsCommitted));

        // Whatever was read twice was skipped, and what this process had seen before is labelled as a rebalance redelivery.
        Assert.All(all.Where(r => r.Outcome == ProcessingOutcome.Duplicate && r.Message.Redelivered), r => Assert.Equal("rebalance", r.Message.RedeliveryCause));
    }

    [Fact]
    public async Task Offset_commit_and_fetch_errors_and_a_broker_down_then_up_recover_with_exact_counts()
    {
        using var cluster = MockKafkaCluster.Start();
        Assert.SkipUnless(cluster.IsMock, "fault injection needs librdkafka's mock cluster (KAFKA_BOOTSTRAP_SERVERS is set)");
        var topic = Unique("faults");
        cluster.CreateTopic(topic, 3);
        Produce(cluster, topic, Enumerable.Range(0, 300).Select(i => $"f-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, onRun: _ => Thread.Sleep(1)), HandlerOptions("faults"));
        var group = Unique("g");
        await using var running = Start(cluster, group, processor, Options(topic, o => o.CommitEveryMessages = 10));
        await WaitUntilAsync(async () => await CountAsync(db, table) >= 50, Timeout, async () => $"{await CountAsync(db, table)} rows");

        cluster.PushRequestErrors(MockKafkaCluster.ApiOffsetCommit, ErrorCode.RequestTimedOut, ErrorCode.NotCoordinatorForGroup, ErrorCode.RequestTimedOut);
        cluster.PushRequestErrors(MockKafkaCluster.ApiFetch, ErrorCode.NotLeaderForPartition, ErrorCode.RequestTimedOut, ErrorCode.NotLeaderForPartition);
        cluster.SetBrokerDown(2);
        var producing = Task.Run(() => Produce(cluster, topic, Enumerable.Range(300, 300).Select(i => $"f-{i}")), TestContext.Current.CancellationToken);
        await Task.Delay(1_500, TestContext.Current.CancellationToken);
        cluster.SetBrokerUp(2);
        await producing;

        await WaitForCommittedToEndAsync(cluster, group, topic, 3, Timeout);
        await running.StopAsync();
        Assert.Equal(600L, await CountAsync(db, table));
        Assert.Equal(600L, await AppliedAsync(db, table));
        Assert.Equal(600L, (await cluster.CommittedOffsetsAsync(group, topic, 3)).Sum());
    }

    [Fact]
    public async Task Fetch_errors_are_not_messages_nothing_is_dead_lettered_and_nothing_is_skipped()
    {
        using var cluster = MockKafkaCluster.Start();
        Assert.SkipUnless(cluster.IsMock, "fault injection needs librdkafka's mock cluster (KAFKA_BOOTSTRAP_SERVERS is set)");
        var topic = Unique("fetch-errors");
        cluster.CreateTopic(topic, 1);
        cluster.CreateTopic(topic + ".dlq", 1);
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("fetch-errors"));
        var group = Unique("g");

        // Failed fetches surface as consume errors that carry a record (the fetch position, the error text as value).
        cluster.PushRequestErrors(MockKafkaCluster.ApiFetch, Enumerable.Repeat(ErrorCode.RequestTimedOut, 6).ToArray());
        Produce(cluster, topic, Enumerable.Range(0, 100).Select(i => $"e-{i}"));
        await using (var running = Start(cluster, group, processor, Options(topic, o => o.CommitEveryMessages = 10)))
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) == 100, Timeout, async () => $"{await CountAsync(db, table)} rows");
            cluster.PushRequestErrors(MockKafkaCluster.ApiFetch, Enumerable.Repeat(ErrorCode.RequestTimedOut, 6).ToArray());
            Produce(cluster, topic, Enumerable.Range(100, 100).Select(i => $"e-{i}"));
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal(200L, await CountAsync(db, table));
        Assert.Equal(200L, await AppliedAsync(db, table));
        Assert.Equal([0L], cluster.EndOffsets(topic + ".dlq", 1));
    }

    [Theory]
    [MemberData(nameof(IdempotentKafkaConsumerTests.BatchSizesAndStores), 1, 20, MemberType = typeof(IdempotentKafkaConsumerTests))]
    public async Task Store_down_for_a_while_pauses_without_dead_letters_or_commits_and_recovers_with_exact_counts(int batchSize, StoreKind kind)
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("outage");
        cluster.CreateTopic(topic, 3);
        cluster.CreateTopic(topic + ".dlq", 1);
        Produce(cluster, topic, Enumerable.Range(0, 150).Select(i => $"o-{i}"));

        await using var store = await EffectStore.CreateAsync(kind, db, redis, throughProxy: true);
        var processor = new IdempotentProcessor(store.Store, store.Handler(onRun: _ => Thread.Sleep(2)), HandlerOptions("outage", maxAttempts: 2));
        var outcomes = new ConcurrentBag<ProcessingResult>();
        var group = Unique("g");
        await using var running = Start(cluster, group, processor, Options(topic, o => { o.BatchSize = batchSize; o.CommitEveryMessages = 5; }), outcomes.Add);
        await WaitUntilAsync(async () => (await store.ReadAsync()).Keys >= 30, Timeout, async () => $"{await store.ReadAsync()}");

        store.Cut();
        Produce(cluster, topic, Enumerable.Range(150, 150).Select(i => $"o-{i}"));
        await Task.Delay(2_000, TestContext.Current.CancellationToken);

        // While the store is away the group's offsets never pass a message whose effects are not in the store.
        var rowsDuringOutage = (await store.ReadAsync()).Keys;
        var committedDuringOutage = (await cluster.CommittedOffsetsAsync(group, topic, 3)).Where(o => o > 0).Sum();
        Assert.True(committedDuringOutage <= rowsDuringOutage, $"committed {committedDuringOutage} offsets but only {rowsDuringOutage} effects are in the store");
        Assert.True(rowsDuringOutage < 300, "the outage came too late to test anything");
        store.Restore();

        await WaitForCommittedToEndAsync(cluster, group, topic, 3, Timeout);
        await running.StopAsync();
        Assert.Equal(new EffectCounts(300, 300, 1), await store.ReadAsync());
        // A commit cut off in flight may have landed: its retry after the outage is then a Duplicate, never a second effect.
        Assert.Equal(300, outcomes.Count);
        Assert.DoesNotContain(outcomes, r => !r.IsCommitted);
        Assert.Equal(0L, cluster.EndOffsets(topic + ".dlq", 1)[0]);
    }

    [Fact]
    public async Task Lazy_commits_every_N_messages_redeliver_at_most_N_minus_1_after_a_crash_and_all_are_duplicates()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("lazy");
        cluster.CreateTopic(topic, 1);
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), HandlerOptions("lazy"));
        var group = Unique("g");
        const int n = 10;

        long committed;
        await using (var crashing = Start(cluster, group, processor, Options(topic, o => { o.CommitEveryMessages = n; o.CommitInterval = TimeSpan.FromHours(1); })))
        {
            crashing.Consumer.CommitOnShutdown = false;

            // 90 messages in chunks of N: each chunk's N-th completion triggers one commit, which covers exactly that chunk.
            for (var chunk = 0; chunk < 9; chunk++)
            {
                var end = (chunk + 1) * n;
                Produce(cluster, topic, Enumerable.Range(chunk * n, n).Select(i => $"l-{i}"));
                await WaitUntilAsync(
                    async () => (await cluster.CommittedOffsetsAsync(group, topic, 1))[0] == end,
                    Timeout,
                    async () => $"committed {(await cluster.CommittedOffsetsAsync(group, topic, 1))[0]}, expected {end}");
            }

            // 5 more: fewer than N since the last commit, so no commit follows them before the crash.
            Produce(cluster, topic, Enumerable.Range(90, 5).Select(i => $"l-{i}"));
            await WaitUntilAsync(async () => await CountAsync(db, table) == 95, Timeout, async () => $"{await CountAsync(db, table)} rows");
            await Task.Delay(500, TestContext.Current.CancellationToken);
            await crashing.StopAsync();
            committed = (await cluster.CommittedOffsetsAsync(group, topic, 1))[0];
        }

        Assert.Equal(90, committed);
        var outcomes = new ConcurrentBag<ProcessingResult>();
        await using (var restarted = Start(cluster, group, processor, Options(topic), outcomes.Add))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal(95 - committed, outcomes.Count);
        Assert.InRange(outcomes.Count, 1, n - 1);
        Assert.All(outcomes, r => Assert.Equal(ProcessingOutcome.Duplicate, r.Outcome));
        Assert.Equal(95L, await CountAsync(db, table));
        Assert.Equal(95L, await AppliedAsync(db, table));
    }

    /// <summary>The consumer in a child process (tests/Idempotency.Kafka.TestHost), connected to the test's mock cluster over TCP.</summary>
    private sealed partial class TestHost : IDisposable
    {
        private readonly Process _process;
        private readonly ConcurrentQueue<string> _lines = new();

        private TestHost(Process process)
        {
            _process = process;
            _process.OutputDataReceived += (_, e) => { if (e.Data is not null) { _lines.Enqueue(e.Data); } };
            _process.ErrorDataReceived += (_, e) => { if (e.Data is not null && !e.Data.Contains("rdkafka", StringComparison.Ordinal)) { _lines.Enqueue("err: " + e.Data); } };
            _process.BeginOutputReadLine();
            _process.BeginErrorReadLine();
        }

        public string Output => string.Join(" | ", _lines.TakeLast(5));

        public static TestHost Start(MockKafkaCluster cluster, string topic, string group, PostgresFixture db, PostgresIdempotencyStore store, string table, int commitEvery, int commitIntervalMs)
        {
            var dll = Path.Combine(AppContext.BaseDirectory.Replace("Idempotency.Kafka.Tests", "Idempotency.Kafka.TestHost", StringComparison.Ordinal), "Idempotency.Kafka.TestHost.dll");
            Assert.True(File.Exists(dll), $"test host not built at {dll}");
            var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, UseShellExecute = false };
            foreach (var arg in new[]
            {
                dll, cluster.BootstrapServers, topic, group, db.ConnectionString, store.Options.Schema, store.Options.Table, store.Options.OutboxTable, table,
                commitEvery.ToString(), commitIntervalMs.ToString(),
            })
            {
                start.ArgumentList.Add(arg);
            }

            return new TestHost(Process.Start(start)!);
        }

        public int Count(string outcome) => _lines.Count(l => l.StartsWith("result " + outcome + " ", StringComparison.Ordinal));

        /// <summary>SIGKILL on Linux: no shutdown code runs, nothing more is committed.</summary>
        public void Kill()
        {
            _process.Kill(entireProcessTree: true);
            Assert.True(_process.WaitForExit(10_000), "the killed host did not exit");
        }

        public async Task StopGracefullyAsync()
        {
            await _process.StandardInput.WriteLineAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await _process.WaitForExitAsync(timeout.Token);
            _process.WaitForExit();
            Assert.Contains("stopped", _lines);
        }

        public void Dispose()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            _process.Dispose();
        }
    }
}
