using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>Duplicates, visibility expiry, heartbeat and partial delete failures against the emulator and PostgreSQL.</summary>
public sealed class SqsDeliveryTests(SqsFixture sqs, PostgresFixture db, RedisFixture redis) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Message_sent_twice_has_one_effect_and_both_copies_are_deleted(StoreKind kind)
    {
        var queue = await sqs.CreateQueueAsync("twice");
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        await sqs.SendAsync(queue, "{\"amount\":1}", "order-1");
        await sqs.SendAsync(queue, "{\"amount\":1}", "order-1");

        await using var worker = Start(sqs.CreateClient(), store.Store, store.Handler(), Handler("twice"), Fast(queue));
        await SqsFixture.WaitUntilAsync(async () => worker.Statistics.Deleted == 2 && await sqs.DrainedAsync(queue), Long, "both copies deleted", () => sqs.DescribeAsync(queue, store, worker));
        await worker.StopAsync();

        Assert.Equal(1, store.Runs);
        Assert.Equal(new EffectCounts(1, 1, 1), await store.ReadAsync());
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
        Assert.Equal(0, worker.Statistics.DeleteFailures);
    }

    [Fact]
    public async Task Visibility_expires_mid_handler_and_second_worker_gets_the_copy_exactly_one_effect()
    {
        var queue = await sqs.CreateQueueAsync("expiry");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var firstRuns = 0;
        await sqs.SendAsync(queue, "{\"amount\":1}", "slow-1");

        // Worker A's heartbeat fails, so its 1 s visibility runs out while its handler is still inside the transaction.
        var faulty = FaultySqs.Wrap(sqs.CreateClient());
        faulty.Intercept = (name, _) => name == nameof(IAmazonSQS.ChangeMessageVisibilityBatchAsync)
            ? Task.FromException<ChangeMessageVisibilityBatchResponse>(new AmazonSQSException("injected: visibility extension failed"))
            : null;
        var slow = Credit(table, async (_, ct) =>
        {
            Interlocked.Increment(ref firstRuns);
            await release.Task.WaitAsync(TimeSpan.FromSeconds(20), ct);
        });
        var optionsA = Fast(queue, visibilitySeconds: 1);
        optionsA.Concurrency = 1;
        await using var workerA = Start(faulty.Client, store, slow, Handler("expiry"), optionsA);
        await SqsFixture.WaitUntilAsync(() => Task.FromResult(Volatile.Read(ref firstRuns) == 1), Long, "worker A's handler to start");

        await using var workerB = Start(sqs.CreateClient(), store, Credit(table), Handler("expiry"), Fast(queue));
        await SqsFixture.WaitUntilAsync(() => Task.FromResult(workerB.Statistics.Received >= 1), Long, "worker B to receive the copy after the visibility expired",
            () => sqs.DescribeAsync(queue, db, table, workerA, workerB));
        Assert.True(workerA.Statistics.VisibilityExtensionFailures >= 1, workerA.Statistics.ToString());

        release.SetResult();
        await sqs.WaitProcessedAsync(queue, db, table, 1, Long, workerA, workerB);
        await workerA.StopAsync();
        await workerB.StopAsync();

        Assert.Equal(1L, await db.AppliedAsync(table));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task Heartbeat_keeps_a_slow_handlers_message_invisible_to_other_workers()
    {
        var queue = await sqs.CreateQueueAsync("heartbeat");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        await sqs.SendAsync(queue, "{\"amount\":1}", "long-1");

        // 1 s visibility, 3 s handler: only the heartbeat keeps the message from going to worker B.
        var slow = Credit(table, async (_, ct) =>
        {
            Interlocked.Increment(ref runs);
            await Task.Delay(TimeSpan.FromSeconds(3), ct);
        });
        var options = Fast(queue, visibilitySeconds: 1);
        options.Concurrency = 1;
        await using var workerA = Start(sqs.CreateClient(), store, slow, Handler("heartbeat"), options);
        await SqsFixture.WaitUntilAsync(() => Task.FromResult(Volatile.Read(ref runs) == 1), Long, "the handler to start");
        await using var workerB = Start(sqs.CreateClient(), store, Credit(table), Handler("heartbeat"), Fast(queue));

        await sqs.WaitProcessedAsync(queue, db, table, 1, Long, workerA, workerB);
        await workerA.StopAsync();
        await workerB.StopAsync();

        Assert.Equal(0, workerB.Statistics.Received);
        Assert.True(workerA.Statistics.VisibilityExtensions >= 3, workerA.Statistics.ToString());
        Assert.Equal(1, runs);
        Assert.Equal(1L, await db.AppliedAsync(table));
    }

    [Fact]
    public async Task Partial_delete_failure_is_counted_and_the_message_comes_back_as_a_duplicate()
    {
        var queue = await sqs.CreateQueueAsync("partial-delete");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 5).Select(i => ($"{{\"i\":{i}}}", (string?)$"pd-{i}"))]);

        // The first DeleteMessageBatch reports its first entry as failed without deleting it.
        var inner = sqs.CreateClient();
        var faulty = FaultySqs.Wrap(inner);
        var injected = 0;
        faulty.Intercept = (name, args) =>
        {
            if (name != nameof(IAmazonSQS.DeleteMessageBatchAsync) || args[0] is not DeleteMessageBatchRequest request || Interlocked.Exchange(ref injected, 1) == 1)
            {
                return null;
            }

            return PartialDeleteAsync(inner, request);
        };
        var options = Fast(queue, visibilitySeconds: 1);
        options.Concurrency = 1;
        await using var worker = Start(faulty.Client, store, Credit(table, (_, _) => { Interlocked.Increment(ref runs); return Task.CompletedTask; }), Handler("partial"), options);

        await SqsFixture.WaitUntilAsync(async () => worker.Statistics.Deleted == 5 && await sqs.DrainedAsync(queue), Long, "all five deleted in the end",
            () => sqs.DescribeAsync(queue, db, table, worker));
        await worker.StopAsync();

        Assert.Equal(1, worker.Statistics.DeleteFailures);
        Assert.Equal(6, worker.Statistics.Received);
        Assert.Equal(5, runs);
        Assert.Equal(5L, await db.AppliedAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    private static async Task<DeleteMessageBatchResponse> PartialDeleteAsync(IAmazonSQS inner, DeleteMessageBatchRequest request)
    {
        var kept = request.Entries[0];
        var rest = request.Entries.Skip(1).ToList();
        var response = rest.Count == 0
            ? new DeleteMessageBatchResponse { Successful = [] }
            : await inner.DeleteMessageBatchAsync(new DeleteMessageBatchRequest { QueueUrl = request.QueueUrl, Entries = rest });
        response.Failed = [new BatchResultErrorEntry { Id = kept.Id, Code = "InjectedFailure", Message = "injected by the test", SenderFault = false }];
        return response;
    }

    [Fact]
    public async Task Hosted_service_form_processes_and_stops_without_dependency_injection()
    {
        var queue = await sqs.CreateQueueAsync("hosted");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 3).Select(i => ($"{{\"i\":{i}}}", (string?)$"h-{i}"))]);
        var worker = new IdempotentSqsWorker(sqs.CreateClient(), new IdempotentProcessor(store, Credit(table), Handler("hosted")), Fast(queue));
        using var service = new IdempotentSqsBackgroundService(worker);

        await service.StartAsync(TestContext.Current.CancellationToken);
        await SqsFixture.WaitUntilAsync(async () => await db.RowsAsync(table) == 3 && await sqs.DrainedAsync(queue), Long, "three rows and an empty queue");
        await service.StopAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);

        Assert.True(service.ExecuteTask!.IsCompletedSuccessfully);
        Assert.Equal(3L, await db.AppliedAsync(table));
        Assert.Equal(3, worker.Statistics.Deleted);
    }
}
