using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsShutdownTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Graceful_shutdown_finishes_in_flight_work_deletes_it_and_loses_nothing()
    {
        const int total = 60;
        var queue = await sqs.CreateQueueAsync("shutdown");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, total).Select(i => ($"{{\"i\":{i}}}", (string?)$"s-{i}"))]);
        var slow = Credit(table, (_, ct) => Task.Delay(100, ct));

        var options = Fast(queue, visibilitySeconds: 3);
        options.Concurrency = 1; // batches of 10 taking about 1 s each: the stop lands while one is in flight
        var worker = Start(sqs.CreateClient(), store, slow, Handler("shutdown"), options);
        await SqsFixture.WaitUntilAsync(async () => await db.RowsAsync(table) >= 5, Long, "some messages processed");
        await worker.StopAsync(TimeSpan.FromSeconds(15));

        // Everything that committed was deleted; everything else is (or becomes) visible again.
        var committed = await db.RowsAsync(table);
        Assert.Equal(committed, worker.Statistics.Deleted);
        Assert.True(committed < total, $"stopped part way ({committed} of {total})");
        // Everything else is still in the queue. A long poll cancelled by the stop may have taken up to one batch on the
        // server side: those stay "not visible" until their visibility timeout (fauxqs only moves them back when a
        // receive looks, so the count below does not change by waiting), and the restarted worker gets them then.
        await SqsFixture.WaitUntilAsync(async () => await sqs.CountsAsync(queue) is var (visible, notVisible) && visible + notVisible == total - committed && notVisible <= options.MaxMessages,
            TimeSpan.FromSeconds(10), "the rest in the queue", () => sqs.DescribeAsync(queue, db, table, worker));

        await using var restarted = Start(sqs.CreateClient(), store, Credit(table), Handler("shutdown"), Fast(queue));
        await sqs.WaitProcessedAsync(queue, db, table, total, Long, restarted);
        await restarted.StopAsync();
        Assert.Equal((long)total, await db.AppliedAsync(table));
        await worker.DisposeAsync();
    }

    [Fact]
    public async Task Shutdown_timeout_cancels_a_stuck_batch_and_releases_its_messages_at_once()
    {
        var queue = await sqs.CreateQueueAsync("stuck");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var entered = 0;
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 3).Select(i => ($"{{\"i\":{i}}}", (string?)$"st-{i}"))]);
        var stuck = Credit(table, async (_, ct) =>
        {
            Interlocked.Increment(ref entered);
            await Task.Delay(Timeout.Infinite, ct);
        });

        // A 30 s visibility timeout: only an explicit release makes the messages visible within the test.
        var options = Fast(queue, visibilitySeconds: 30);
        options.Concurrency = 1;
        options.ShutdownTimeout = TimeSpan.FromMilliseconds(300);
        var worker = Start(sqs.CreateClient(), store, stuck, Handler("stuck"), options);
        await SqsFixture.WaitUntilAsync(async () => Volatile.Read(ref entered) >= 1 && (await sqs.CountsAsync(queue)).Visible == 0, Long, "all three received and a handler stuck");
        await worker.StopAsync(TimeSpan.FromSeconds(10));

        await SqsFixture.WaitUntilAsync(async () => await sqs.CountsAsync(queue) == (3, 0), TimeSpan.FromSeconds(5), "the three messages visible again",
            () => sqs.DescribeAsync(queue, db, table, worker));
        Assert.Equal(0L, await db.RowsAsync(table));
        Assert.Equal(0, worker.Statistics.Deleted);
        Assert.True(worker.Statistics.Released >= 1, worker.Statistics.ToString());
        await worker.DisposeAsync();
    }
}
