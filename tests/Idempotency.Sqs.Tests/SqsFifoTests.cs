using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsFifoTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Fifo_messages_of_each_group_are_applied_in_order_while_groups_run_concurrently()
    {
        const int groups = 8;
        const int perGroup = 15;
        var queue = await sqs.CreateQueueAsync("fifo", fifo: true);
        var store = await db.CreateStoreAsync();
        var log = $"{db.Schema}.fifo_log_{Guid.NewGuid():N}"[..40];
        await using (var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
        {
            await connection.ExecuteAsync($"CREATE TABLE {log} (n bigserial PRIMARY KEY, grp text NOT NULL, seq int NOT NULL, key text NOT NULL UNIQUE)");
        }

        // No IdempotencyKey attribute: the key is the FIFO MessageDeduplicationId. One message fails on its first attempt.
        var failedOnce = 0;
        var concurrentGroups = 0;
        var maxConcurrentGroups = 0;
        var handler = IdempotentHandler.Create(async (context, ct) =>
        {
            var native = context.GetNative<Amazon.SQS.Model.Message>();
            var group = native.Attributes["MessageGroupId"];
            var seq = int.Parse(native.Body);
            if (group == "g3" && seq == 5 && Interlocked.Exchange(ref failedOnce, 1) == 0)
            {
                throw new InvalidOperationException("fails once on purpose");
            }

            var now = Interlocked.Increment(ref concurrentGroups);
            InterlockedMax(ref maxConcurrentGroups, now);
            try
            {
                await Task.Delay(5, ct);
                await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {log} (grp, seq, key) VALUES (@group, @seq, @key)",
                    new { group, seq, key = context.Key }, context.GetNpgsqlTransaction());
            }
            finally
            {
                Interlocked.Decrement(ref concurrentGroups);
            }
        });

        await Task.WhenAll(Enumerable.Range(0, groups).Select(async g =>
        {
            for (var s = 0; s < perGroup; s++)
            {
                await sqs.SendAsync(queue, s.ToString(System.Globalization.CultureInfo.InvariantCulture), key: null, groupId: $"g{g}", deduplicationId: $"g{g}-s{s}");
            }
        }));

        // One worker with batch transactions (groups in waves), one with a transaction per message (a task per group).
        var batchOptions = Fast(queue);
        batchOptions.Pollers = 3;
        var perMessageOptions = Fast(queue);
        perMessageOptions.Pollers = 3;
        perMessageOptions.BatchProcessing = false;
        await using var batchWorker = Start(sqs.CreateClient(), store, handler, Handler("fifo"), batchOptions);
        await using var perMessageWorker = Start(sqs.CreateClient(), store, handler, Handler("fifo"), perMessageOptions);

        await sqs.WaitProcessedAsync(queue, db, log, groups * perGroup, Long, batchWorker, perMessageWorker);
        await batchWorker.StopAsync();
        await perMessageWorker.StopAsync();

        await using var read = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
        var rows = (await read.QueryAsync<(string Grp, int Seq)>($"SELECT grp, seq FROM {log} ORDER BY n")).ToList();
        Assert.Equal(groups * perGroup, rows.Count);
        foreach (var group in rows.GroupBy(r => r.Grp))
        {
            Assert.Equal(Enumerable.Range(0, perGroup), group.Select(r => r.Seq));
        }

        Assert.Equal(1, failedOnce);
        Assert.Equal(1, batchWorker.Statistics.Retried + perMessageWorker.Statistics.Retried);
        Assert.True(batchWorker.Statistics.Deleted > 0 && perMessageWorker.Statistics.Deleted > 0,
            $"both workers took part: {batchWorker.Statistics} | {perMessageWorker.Statistics}");
        Assert.True(maxConcurrentGroups > 1, $"groups ran concurrently (max {maxConcurrentGroups})");
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    private static void InterlockedMax(ref int target, int value)
    {
        int current;
        while ((current = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, current) != current)
        {
        }
    }
}
