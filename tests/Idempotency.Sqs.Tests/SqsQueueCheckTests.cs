using Amazon.SQS.Model;
using Idempotency.Health;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>
/// A queue or dead-letter queue that does not exist fails the start; one that disappears while the worker runs keeps every
/// message, makes health say so, and the worker recovers once the queue is back.
/// </summary>
public sealed class SqsQueueCheckTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task A_dead_letter_queue_that_does_not_exist_fails_the_start_naming_the_setting_and_nothing_runs()
    {
        var queue = await sqs.CreateQueueAsync("nodlq");
        var missing = queue + "-missing";
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendAsync(queue, "{}", "k");
        var runs = 0;
        var options = Fast(queue);
        options.DeadLetterQueueUrl = missing;
        await using var worker = new IdempotentSqsWorker(sqs.Client, new IdempotentProcessor(store, Credit(table, (_, _) => { Interlocked.Increment(ref runs); return Task.CompletedTask; }), Handler("nodlq")), options);

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => worker.StartAsync(TestContext.Current.CancellationToken));

        Assert.Contains(nameof(SqsIdempotencyOptions.DeadLetterQueueUrl), error.Message, StringComparison.Ordinal);
        Assert.Contains(missing, error.Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", error.Message, StringComparison.Ordinal);
        await Assert.ThrowsAnyAsync<Exception>(() => worker.Completion.WaitAsync(Long, TestContext.Current.CancellationToken));
        await Task.Delay(TimeSpan.FromSeconds(2), TestContext.Current.CancellationToken);
        Assert.Equal(0, Volatile.Read(ref runs));
        Assert.Equal(0L, worker.Statistics.Received);
        Assert.Equal((1, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task A_queue_that_does_not_exist_fails_the_start_of_the_worker_and_of_the_host()
    {
        var missing = await sqs.CreateQueueAsync("noqueue") + "-missing";
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await using var worker = new IdempotentSqsWorker(sqs.Client, new IdempotentProcessor(store, Credit(table), Handler("noqueue")), Fast(missing));

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => worker.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains(nameof(SqsIdempotencyOptions.QueueUrl), error.Message, StringComparison.Ordinal);
        Assert.Contains(missing, error.Message, StringComparison.Ordinal);
        Assert.Contains("does not exist", error.Message, StringComparison.Ordinal);

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(new SqsDependencyInjectionTests.BusinessTable(table));
        builder.Services.AddIdempotency()
            .UseStore(_ => store)
            .AddSqsConsumer<SqsDependencyInjectionTests.CreditHandler>("di-noqueue", o => { o.QueueUrl = missing; o.WaitTimeSeconds = 1; }, _ => sqs.CreateClient());
        using var host = builder.Build();

        var hostError = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains(nameof(SqsIdempotencyOptions.QueueUrl), hostError.Message, StringComparison.Ordinal);
        Assert.Contains(missing, hostError.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Credentials_refused_the_queues_attributes_still_start_and_process()
    {
        // A least-privilege policy may grant receive, delete and send but not sqs:GetQueueAttributes: the start-up check
        // must not refuse a consumer that can work.
        Assert.False(sqs.IsReal, "this test stands in for IAM with a client that refuses GetQueueAttributes on the emulator");
        var queue = await sqs.CreateQueueAsync("noattrs");
        var deadLetter = await sqs.CreateQueueAsync("noattrs-dlq");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        using var client = new AttributesRefusedClient(sqs.ServiceUrl!);
        var options = Fast(queue);
        options.DeadLetterQueueUrl = deadLetter;
        await using var worker = Start(client, store, Credit(table), Handler("noattrs"), options);
        await sqs.SendAsync(queue, "{}", "k-1");

        await sqs.WaitProcessedAsync(queue, db, table, 1, Long, worker);

        Assert.True(client.Refused >= 2, $"the check asked for both queues' attributes ({client.Refused} refused)");
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
        Assert.False(worker.Run.IsCompleted, "the worker runs");
        await worker.StopAsync();
    }

    /// <summary>An emulator client that answers GetQueueAttributes as SQS answers a policy without that permission.</summary>
    private sealed class AttributesRefusedClient(string serviceUrl)
        : Amazon.SQS.AmazonSQSClient(new Amazon.Runtime.BasicAWSCredentials("test", "test"), new Amazon.SQS.AmazonSQSConfig { ServiceURL = serviceUrl, AuthenticationRegion = "us-east-1" })
    {
        private int _refused;

        public int Refused => Volatile.Read(ref _refused);

        public override Task<GetQueueAttributesResponse> GetQueueAttributesAsync(GetQueueAttributesRequest request, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _refused);
            throw new Amazon.SQS.AmazonSQSException(
                "User: arn:aws:iam::123456789012:role/consumer is not authorized to perform: sqs:getqueueattributes",
                Amazon.Runtime.ErrorType.Sender,
                "AccessDenied",
                "request-id",
                System.Net.HttpStatusCode.Forbidden);
        }
    }

    [Fact]
    public async Task A_dead_letter_queue_deleted_while_running_keeps_the_message_backs_off_and_takes_it_once_recreated()
    {
        var queue = await sqs.CreateQueueAsync("dlqgone");
        var deadLetter = await sqs.CreateQueueAsync("dlqgone-dlq");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var handler = Credit(table, (context, _) =>
        {
            if (context.Key != "poison")
            {
                return Task.CompletedTask;
            }

            Interlocked.Increment(ref runs);
            throw new InvalidOperationException("poison");
        });
        var handlerOptions = Handler("dlqgone", maxAttempts: 2);
        handlerOptions.StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromSeconds(1), MaxDelay = TimeSpan.FromSeconds(8), UseJitter = false };
        var options = Fast(queue);
        options.DeadLetterQueueUrl = deadLetter;
        await using var worker = Start(sqs.Client, store, handler, handlerOptions, options);
        await sqs.SendAsync(queue, "{}", "ok");
        await sqs.WaitProcessedAsync(queue, db, table, 1, Long, worker);

        // The dead-letter queue disappears after the start-up check: every dead-letter send fails.
        await sqs.Client.DeleteQueueAsync(deadLetter, TestContext.Current.CancellationToken);
        await sqs.SendAsync(queue, "{}", "poison");
        await SqsFixture.WaitUntilAsync(() => Task.FromResult(worker.Statistics.DeadLetterFailures >= 1), Long, "a failed dead-letter send");

        // Each failed dead-letter waits longer (1, 2, 4, 8 s): about 5 in 20 s. A constant 1 s wait ran the failing
        // handler and the send 13 or more times in that window.
        await Task.Delay(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        var failures = worker.Statistics.DeadLetterFailures;
        Assert.InRange(failures, 2, 7);
        Assert.InRange(Volatile.Read(ref runs), 3, 9);
        Assert.Equal(0, worker.Statistics.DeadLettered);
        Assert.Equal(1L, await db.RowsAsync(table));
        var (visible, notVisible) = await sqs.CountsAsync(queue);
        Assert.Equal(1, visible + notVisible);

        // Nothing was lost: once the queue is back, the message moves there and leaves the source queue.
        var recreated = (await sqs.Client.CreateQueueAsync(new CreateQueueRequest { QueueName = deadLetter[(deadLetter.LastIndexOf('/') + 1)..] }, TestContext.Current.CancellationToken)).QueueUrl;
        Assert.Equal(deadLetter, recreated);
        await SqsFixture.WaitUntilAsync(async () => (await sqs.CountsAsync(deadLetter)).Visible == 1 && await sqs.DrainedAsync(queue), Long, "the message in the re-created dead-letter queue", () => sqs.DescribeAsync(queue, db, table, worker));
        await worker.StopAsync();

        Assert.Equal(1, worker.Statistics.DeadLettered);
        Assert.Equal(1L, await db.AppliedAsync(table));
    }

    [Fact]
    public async Task A_queue_deleted_while_running_makes_health_unhealthy_with_the_cause_until_it_is_recreated()
    {
        var queue = await sqs.CreateQueueAsync("qgone");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var registry = new ConsumerHealthRegistry();
        var heartbeat = registry.Register("sqs:qgone", TimeProvider.System);
        var check = new ConsumerHealthCheck(registry, TimeProvider.System, TimeSpan.FromMinutes(5));
        var worker = new IdempotentSqsWorker(sqs.Client, new IdempotentProcessor(store, Credit(table), Handler("qgone")), Fast(queue)) { Health = heartbeat };
        await using var running = new RunningWorker(worker);
        await sqs.SendAsync(queue, "{}", "before");
        await sqs.WaitProcessedAsync(queue, db, table, 1, Long, running);
        Assert.Equal(HealthStatus.Healthy, (await check.CheckHealthAsync(new HealthCheckContext(), TestContext.Current.CancellationToken)).Status);

        await sqs.Client.DeleteQueueAsync(queue, TestContext.Current.CancellationToken);
        await SqsFixture.WaitUntilAsync(async () => (await check.CheckHealthAsync(new HealthCheckContext(), TestContext.Current.CancellationToken)).Status == HealthStatus.Unhealthy, Long, "unhealthy consumer", () => Task.FromResult($"{heartbeat.State}: {heartbeat.Detail}; {worker.Statistics}"));
        Assert.Equal(ConsumerState.Misconfigured, heartbeat.State);
        Assert.Contains(queue, heartbeat.Detail, StringComparison.Ordinal);
        Assert.Contains("does not exist", heartbeat.Detail, StringComparison.Ordinal);
        Assert.True(worker.Statistics.ReceiveErrors >= 1);

        // Receives are still retried: once the queue is back the worker consumes again and health recovers.
        var recreated = (await sqs.Client.CreateQueueAsync(new CreateQueueRequest { QueueName = queue[(queue.LastIndexOf('/') + 1)..] }, TestContext.Current.CancellationToken)).QueueUrl;
        Assert.Equal(queue, recreated);
        await sqs.SendAsync(queue, "{}", "after");
        await sqs.WaitProcessedAsync(queue, db, table, 2, Long, running);
        await SqsFixture.WaitUntilAsync(async () => (await check.CheckHealthAsync(new HealthCheckContext(), TestContext.Current.CancellationToken)).Status == HealthStatus.Healthy, Long, "healthy again", () => Task.FromResult($"{heartbeat.State}: {heartbeat.Detail}"));
        Assert.Equal(ConsumerState.Running, heartbeat.State);
        Assert.Null(heartbeat.Detail);
        Assert.Equal(2L, await db.AppliedAsync(table));
    }
}
