using System.Collections.Concurrent;
using Dapper;
using Idempotency.TestSupport;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

public sealed class KafkaShutdownTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Graceful_shutdown_commits_exactly_what_committed_and_the_restart_redoes_nothing()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("shutdown");
        cluster.CreateTopic(topic, 1);
        Produce(cluster, topic, Enumerable.Range(0, 200).Select(i => $"s-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var slow = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            await Task.Delay(15, ct);
            await Credit(table).HandleAsync(context, ct);
        }), HandlerOptions("shutdown"));
        var group = Unique("g");

        // Lazy commits would leave up to 1000 uncommitted: only the shutdown itself can commit them.
        await using (var first = Start(cluster, group, slow, Options(topic, o => { o.BatchSize = 1; o.CommitEveryMessages = 1_000; o.CommitInterval = TimeSpan.FromHours(1); })))
        {
            await WaitUntilAsync(async () => await CountAsync(db, table) >= 40, Timeout, async () => $"{await CountAsync(db, table)} rows");
            await first.StopAsync();
        }

        var rows = await CountAsync(db, table);
        var committed = (await cluster.CommittedOffsetsAsync(group, topic, 1))[0];
        Assert.InRange(rows, 40, 199);
        Assert.Equal(rows, committed); // everything that committed is acknowledged, nothing that did not

        var outcomes = new ConcurrentBag<ProcessingOutcome>();
        var fast = new IdempotentProcessor(store, Credit(table), HandlerOptions("shutdown"));
        await using (var second = Start(cluster, group, fast, Options(topic), r => outcomes.Add(r.Outcome)))
        {
            await WaitForCommittedToEndAsync(cluster, group, topic, 1, Timeout);
        }

        Assert.Equal(200 - rows, outcomes.Count);
        Assert.All(outcomes, o => Assert.Equal(ProcessingOutcome.Processed, o)); // no redelivery: nothing to deduplicate
        Assert.Equal(200L, await CountAsync(db, table));
        Assert.Equal(200L, await AppliedAsync(db, table));
    }

    [Fact]
    public async Task Shutdown_timeout_cancels_a_stuck_handler_which_rolls_back_and_is_not_committed()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("stuck");
        cluster.CreateTopic(topic, 1);
        Produce(cluster, topic, Enumerable.Range(0, 10).Select(i => $"t-{i}"));
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var stuck = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            await Credit(table).HandleAsync(context, ct);
            if (context.Key == "t-5")
            {
                stuck.TrySetResult();
                await Task.Delay(Timeout, ct); // never finishes by itself
            }
        }), HandlerOptions("stuck"));
        var group = Unique("g");

        await using (var running = Start(cluster, group, processor, Options(topic, o => { o.BatchSize = 1; o.ShutdownTimeout = TimeSpan.FromMilliseconds(500); o.CommitEveryMessages = 1_000; o.CommitInterval = TimeSpan.FromHours(1); })))
        {
            await stuck.Task.WaitAsync(Timeout, TestContext.Current.CancellationToken);
            await running.StopAsync();
        }

        Assert.Equal(5L, await CountAsync(db, table)); // t-5's write rolled back with its claim
        Assert.Equal(5L, (await cluster.CommittedOffsetsAsync(group, topic, 1))[0]);
        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0L, await connection.ExecuteScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = 't-5'"));
    }
}
