using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>
/// Natural batching on a standard queue (the default): the messages of one receive share a store transaction, a failing
/// handler is isolated, and a stop in the middle of a ready group loses and duplicates nothing.
/// </summary>
public sealed class SqsNaturalBatchingTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    private async Task<string> CreateLogAsync()
    {
        var log = $"{db.Schema}.nb_log_{Guid.NewGuid():N}"[..40];
        await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        await connection.ExecuteAsync($"CREATE TABLE {log} (key text PRIMARY KEY, tx bigint NOT NULL)");
        return log;
    }

    /// <summary>Writes the key and the id of the transaction it ran in: rows sharing a tx were one store transaction.</summary>
    private static IIdempotentMessageHandler Logging(string log, Func<MessageContext, CancellationToken, Task>? before = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            if (before is not null)
            {
                await before(context, ct);
            }

            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {log} (key, tx) VALUES (@key, txid_current())", new { key = context.Key }, context.GetNpgsqlTransaction());
        });

    private Task<long> MaxPerTransactionAsync(string log) => db.ScalarAsync<long>($"SELECT coalesce(max(c), 0) FROM (SELECT count(*) AS c FROM {log} GROUP BY tx) x");

    [Fact]
    public async Task A_failing_handler_in_the_middle_of_a_ready_group_is_isolated_and_retried_while_the_rest_commit_together()
    {
        const int total = 10;
        var queue = await sqs.CreateQueueAsync("nb-fail");
        var store = await db.CreateStoreAsync();
        var log = await CreateLogAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, total).Select(i => ($"{{\"i\":{i}}}", (string?)$"nb-{i}"))]);
        var failures = 0;
        var handler = Logging(log, (context, _) =>
            context.Key == "nb-5" && Interlocked.Increment(ref failures) == 1 ? throw new InvalidOperationException("fails once in the middle") : Task.CompletedTask);

        var options = Fast(queue);
        options.Concurrency = 1;
        await using var worker = Start(sqs.CreateClient(), store, handler, Handler("nb-fail"), options);
        await sqs.WaitProcessedAsync(queue, db, log, total, Long, worker);
        await worker.StopAsync();

        Assert.Equal(total, await db.RowsAsync(log));                 // each key once: the retry of nb-5 did not redo the others
        Assert.True(await MaxPerTransactionAsync(log) > 1, "messages of one receive shared a transaction");
        var failedAlone = await db.ScalarAsync<long>($"SELECT count(*) FROM {log} WHERE tx = (SELECT tx FROM {log} WHERE key = 'nb-5')");
        Assert.Equal(1, failedAlone);                                  // the retried message committed on its own, later
        Assert.Equal(2, failures);
        Assert.Equal(1, worker.Statistics.Retried);
        Assert.Equal(total, worker.Statistics.Deleted);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task A_stop_in_the_middle_of_a_ready_group_drains_it_and_deletes_exactly_what_committed()
    {
        const int total = 10;
        var queue = await sqs.CreateQueueAsync("nb-stop");
        var store = await db.CreateStoreAsync();
        var log = await CreateLogAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, total).Select(i => ($"{{\"i\":{i}}}", (string?)$"ns-{i}"))]);
        var inMiddle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = 0;
        var handler = Logging(log, async (_, ct) =>
        {
            if (Interlocked.Increment(ref handled) == 3)
            {
                inMiddle.TrySetResult();
                await release.Task.WaitAsync(ct);
            }
        });

        var options = Fast(queue, visibilitySeconds: 30);
        options.Concurrency = 1;
        var worker = Start(sqs.CreateClient(), store, handler, Handler("nb-stop"), options);
        await inMiddle.Task.WaitAsync(Long, TestContext.Current.CancellationToken);
        var stopping = worker.StopAsync();
        await Task.Delay(300, TestContext.Current.CancellationToken); // the stop is under way while the group is half handled
        release.TrySetResult();
        await stopping;

        // The group in flight finished within the shutdown timeout: what committed was deleted, nothing else was.
        var committed = await db.RowsAsync(log);
        Assert.True(committed >= 3, $"the ready group in flight committed ({committed})");
        Assert.Equal(committed, worker.Statistics.Deleted);
        await SqsFixture.WaitUntilAsync(async () => await sqs.CountsAsync(queue) is var (visible, notVisible) && visible + notVisible == total - committed,
            TimeSpan.FromSeconds(10), "the rest still in the queue", () => sqs.DescribeAsync(queue, db, log, worker));

        await using var restarted = Start(sqs.CreateClient(), store, Logging(log), Handler("nb-stop"), Fast(queue));
        await sqs.WaitProcessedAsync(queue, db, log, total, Long, restarted);
        await restarted.StopAsync();
        Assert.Equal(total, await db.RowsAsync(log));
        await worker.DisposeAsync();
    }

    [Fact]
    public async Task A_stop_cut_by_the_shutdown_timeout_commits_none_of_the_ready_group_and_releases_it_whole()
    {
        const int total = 10;
        var queue = await sqs.CreateQueueAsync("nb-cut");
        var store = await db.CreateStoreAsync();
        var log = await CreateLogAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, total).Select(i => ($"{{\"i\":{i}}}", (string?)$"nc-{i}"))]);
        var inMiddle = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var handled = 0;
        var stuck = Logging(log, async (_, ct) =>
        {
            if (Interlocked.Increment(ref handled) == 3)
            {
                inMiddle.TrySetResult();
                await Task.Delay(Timeout.Infinite, ct);
            }
        });

        var options = Fast(queue, visibilitySeconds: 30);
        options.Concurrency = 1;
        options.ShutdownTimeout = TimeSpan.FromMilliseconds(300);
        var worker = Start(sqs.CreateClient(), store, stuck, Handler("nb-cut"), options);
        await inMiddle.Task.WaitAsync(Long, TestContext.Current.CancellationToken);
        var received = worker.Statistics.Received;
        await worker.StopAsync();

        // The group shared one transaction, cancelled before its commit: no effect, nothing deleted, all visible at once.
        Assert.Equal(0L, await db.RowsAsync(log));
        Assert.Equal(0, worker.Statistics.Deleted);
        Assert.Equal(received, worker.Statistics.Released);
        await SqsFixture.WaitUntilAsync(async () => await sqs.CountsAsync(queue) is var (visible, notVisible) && visible + notVisible == total && notVisible <= options.MaxMessages,
            TimeSpan.FromSeconds(10), "all ten back in the queue", () => sqs.DescribeAsync(queue, db, log, worker));

        await using var restarted = Start(sqs.CreateClient(), store, Logging(log), Handler("nb-cut"), Fast(queue));
        await sqs.WaitProcessedAsync(queue, db, log, total, Long, restarted);
        await restarted.StopAsync();
        Assert.Equal(total, await db.RowsAsync(log));
        await worker.DisposeAsync();
    }
}
