using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsFifoTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    [Theory]
    [InlineData(10)]
    [InlineData(3)]
    [InlineData(1)]
    public async Task Fifo_messages_of_each_group_are_applied_in_order_while_groups_run_concurrently(int batchSize)
    {
        var batchProcessing = batchSize > 1;
        const int groups = 8;
        const int perGroup = 15;
        var ct = TestContext.Current.CancellationToken;
        var queue = await sqs.CreateQueueAsync("fifo", fifo: true);
        var store = await db.CreateStoreAsync();
        var log = $"{db.Schema}.fifo_log_{Guid.NewGuid():N}"[..40];
        await using (var connection = await db.DataSource.OpenConnectionAsync(ct))
        {
            await connection.ExecuteAsync($"CREATE TABLE {log} (n bigserial PRIMARY KEY, grp text NOT NULL, seq int NOT NULL, key text NOT NULL UNIQUE, tx bigint NOT NULL)");
        }

        // No IdempotencyKey attribute: the key is the FIFO MessageDeduplicationId. g3's 6th message fails once.
        // Per message: g0's first message waits for another group's handler, which only a concurrent group can satisfy.
        var failedOnce = 0;
        var otherGroupRan = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var waitedForOtherGroup = false;
        var handler = IdempotentHandler.Create(async (context, token) =>
        {
            var native = context.GetNative<Amazon.SQS.Model.Message>();
            var group = native.Attributes["MessageGroupId"];
            var seq = int.Parse(native.Body);
            if (group != "g0")
            {
                otherGroupRan.TrySetResult();
            }
            else if (seq == 0 && !batchProcessing)
            {
                await otherGroupRan.Task.WaitAsync(TimeSpan.FromSeconds(5), token);
                waitedForOtherGroup = true;
            }

            if (group == "g3" && seq == 5 && Interlocked.Exchange(ref failedOnce, 1) == 0)
            {
                throw new InvalidOperationException("fails once on purpose");
            }

            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {log} (grp, seq, key, tx) VALUES (@group, @seq, @key, txid_current())",
                new { group, seq, key = context.Key }, context.GetNpgsqlTransaction());
        });

        await Task.WhenAll(Enumerable.Range(0, groups).Select(async g =>
        {
            for (var s = 0; s < perGroup; s++)
            {
                await sqs.SendAsync(queue, s.ToString(System.Globalization.CultureInfo.InvariantCulture), key: null, groupId: $"g{g}", deduplicationId: $"g{g}-s{s}");
            }
        }));

        var options = Fast(queue);
        options.Concurrency = 3;
        options.BatchSize = batchSize;
        await using var worker = Start(sqs.CreateClient(), store, handler, Handler("fifo"), options);
        await sqs.WaitProcessedAsync(queue, db, log, groups * perGroup, Long, worker);
        await worker.StopAsync();

        await using var read = await db.DataSource.OpenConnectionAsync(ct);
        var rows = (await read.QueryAsync<(string Grp, int Seq)>($"SELECT grp, seq FROM {log} ORDER BY n")).ToList();
        Assert.Equal(groups * perGroup, rows.Count);
        foreach (var group in rows.GroupBy(r => r.Grp))
        {
            Assert.Equal(Enumerable.Range(0, perGroup), group.Select(r => r.Seq));
        }

        Assert.Equal(1, failedOnce);
        Assert.Equal(1, worker.Statistics.Retried);
        if (batchProcessing)
        {
            // Waves: several groups' messages in one transaction.
            var groupsPerTransaction = await read.ExecuteScalarAsync<long>($"SELECT max(c) FROM (SELECT count(DISTINCT grp) AS c FROM {log} GROUP BY tx) x");
            Assert.True(groupsPerTransaction > 1, $"several groups in one transaction (max {groupsPerTransaction})");
            var perTransaction = await read.ExecuteScalarAsync<long>($"SELECT max(c) FROM (SELECT count(*) AS c FROM {log} GROUP BY tx) x");
            Assert.True(perTransaction <= batchSize, $"at most BatchSize messages in one transaction (max {perTransaction})");
            var sameGroupInOneTransaction = await read.ExecuteScalarAsync<long>($"SELECT count(*) FROM (SELECT tx, grp FROM {log} GROUP BY tx, grp HAVING count(*) > 1) x");
            Assert.Equal(0, sameGroupInOneTransaction); // a group's messages never share a transaction: a failure could not hold back a later one
        }
        else
        {
            Assert.True(waitedForOtherGroup, "g0's handler saw another group's handler run while it waited");
        }

        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }
}
