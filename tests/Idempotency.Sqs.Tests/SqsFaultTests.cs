using System.Diagnostics;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>Crashes and outages: a worker process SIGKILLed mid-batch, the store cut off through a TCP proxy.</summary>
public sealed class SqsFaultTests(SqsFixture sqs, PostgresFixture db, RedisFixture redis) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    [Fact]
    public async Task Worker_process_killed_mid_batch_then_restarted_gives_exact_counts()
    {
        const int total = 300;
        var queue = await sqs.CreateQueueAsync("sigkill");
        var storeTable = "processed_" + Guid.NewGuid().ToString("N")[..8];
        var store = await db.CreateStoreAsync(storeTable);
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, total).Select(i => ($"{{\"i\":{i}}}", (string?)$"k-{i}"))]);

        long rowsAtKill;
        using (var first = StartHost(queue, storeTable, table, handlerDelayMs: 20))
        {
            await SqsFixture.WaitUntilAsync(async () => await db.RowsAsync(table) >= 60, Long, "the child worker to process 60 messages");
            var (_, inFlight) = await sqs.CountsAsync(queue);
            first.Kill(entireProcessTree: true); // SIGKILL: no graceful shutdown, no deletes, no visibility resets
            await first.WaitForExitAsync(TestContext.Current.CancellationToken);
            rowsAtKill = await db.RowsAsync(table);
            Assert.True(inFlight > 0, "the worker had messages in flight when it was killed");
        }

        Assert.InRange(rowsAtKill, 60, total - 1);

        using var second = StartHost(queue, storeTable, table, handlerDelayMs: 0);
        await sqs.WaitProcessedAsync(queue, db, table, total, Long);
        second.StandardInput.Close(); // graceful stop
        Assert.True(second.WaitForExit(15_000), "the restarted worker stops when its stdin closes");

        Assert.Equal((long)total, await db.RowsAsync(table));
        Assert.Equal((long)total, await db.AppliedAsync(table)); // nothing applied twice
        Assert.Equal((long)total, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    private Process StartHost(string queue, string storeTable, string businessTable, int handlerDelayMs)
    {
        var testOutput = AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar);
        var dll = Path.Combine(testOutput.Replace("Idempotency.Sqs.Tests", "Idempotency.Sqs.TestHost", StringComparison.Ordinal), "Idempotency.Sqs.TestHost.dll");
        Assert.True(File.Exists(dll), $"The test host is built with the tests; not found at {dll}");
        var info = new ProcessStartInfo("dotnet", [dll])
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.Environment["SQS_SERVICE_URL"] = sqs.ServiceUrl ?? string.Empty;
        info.Environment["SQS_QUEUE_URL"] = queue;
        info.Environment["PG_CONNECTION"] = db.ConnectionString;
        info.Environment["PG_SCHEMA"] = db.Schema;
        info.Environment["PG_STORE_TABLE"] = storeTable;
        info.Environment["BUSINESS_TABLE"] = businessTable;
        info.Environment["HANDLER_DELAY_MS"] = handlerDelayMs.ToString(System.Globalization.CultureInfo.InvariantCulture);
        info.Environment["VISIBILITY_SECONDS"] = "2";
        var process = Process.Start(info) ?? throw new InvalidOperationException("could not start the test host");
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) TestContext.Current.SendDiagnosticMessage("host: " + e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) TestContext.Current.SendDiagnosticMessage("host err: " + e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Store_down_for_a_while_deletes_and_dead_letters_nothing_early_and_counts_are_exact_after_recovery(StoreKind kind)
    {
        var queue = await sqs.CreateQueueAsync("outage");
        var deadLetter = await sqs.CreateQueueAsync("outage-dlq");
        await using var store = await EffectStore.CreateAsync(kind, db, redis, throughProxy: true);

        // Two attempts before dead-lettering: if an outage were mistaken for a failure, messages would land in the DLQ fast.
        var options = Fast(queue);
        options.DeadLetterQueueUrl = deadLetter;
        await using var worker = Start(sqs.CreateClient(), store.Store, store.Handler(), Handler("outage", maxAttempts: 2), options);

        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 50).Select(i => ($"{{\"i\":{i}}}", (string?)$"o-{i}"))]);
        await sqs.WaitProcessedAsync(queue, store, 50, Long, worker);

        store.Cut();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(50, 50).Select(i => ($"{{\"i\":{i}}}", (string?)$"o-{i}"))]);
        await SqsFixture.WaitUntilAsync(() => Task.FromResult(worker.Statistics.StoreOutages >= 1), Long, "the worker to notice the outage",
            () => sqs.DescribeAsync(queue, store, worker));
        await Task.Delay(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken); // several visibility timeouts and pings

        var (visible, notVisible) = await sqs.CountsAsync(queue);
        Assert.Equal(50, visible + notVisible);             // nothing deleted while the store was down
        Assert.Equal(50, worker.Statistics.Deleted);
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetter)); // nothing dead-lettered
        Assert.Equal(0, worker.Statistics.DeadLettered);
        Assert.Equal(0, worker.Statistics.Retried);            // an outage is not an attempt
        Assert.Equal(new EffectCounts(50, 50, 1), await store.ReadAsync());
        var receivedDuringOutage = worker.Statistics.Received;

        store.Restore();
        await sqs.WaitProcessedAsync(queue, store, 100, Long, worker);
        await worker.StopAsync();

        Assert.Equal(new EffectCounts(100, 100, 1), await store.ReadAsync());
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetter));
        Assert.Equal(0, worker.Statistics.DeadLettered);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
        Assert.True(receivedDuringOutage < 50 + 50 * 3, $"polling slowed down during the outage ({receivedDuringOutage} receives)");
    }
}
