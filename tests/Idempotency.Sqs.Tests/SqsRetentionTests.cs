using Amazon.SQS.Model;
using Idempotency.InMemory;
using Idempotency.TestSupport;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsRetentionTests(SqsFixture sqs) : IClassFixture<SqsFixture>
{
    [Theory]
    [InlineData(1, true)]   // keys kept 1 day, the queue keeps messages 4 days: a late redelivery could run again
    [InlineData(7, false)]
    public async Task Worker_warns_at_start_when_keys_expire_before_the_queue_retention(int retentionDays, bool warns)
    {
        var queue = await sqs.CreateQueueAsync("retention");
        using var client = sqs.CreateClient();
        await client.SetQueueAttributesAsync(new SetQueueAttributesRequest { QueueUrl = queue, Attributes = new() { ["MessageRetentionPeriod"] = "345600" } }, TestContext.Current.CancellationToken);
        var logger = new FakeLogger();
        var options = Handler("retention");
        options.Retention = TimeSpan.FromDays(retentionDays);
        var worker = new IdempotentSqsWorker(client, new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options), Fast(queue), logger);
        using var stop = new CancellationTokenSource();

        var run = worker.RunAsync(stop.Token);
        await SqsFixture.WaitUntilAsync(() => Task.FromResult(logger.Collector.GetSnapshot().Any(r => r.Message.Contains("started", StringComparison.OrdinalIgnoreCase) || r.Message.Contains("MessageRetentionPeriod", StringComparison.Ordinal))), TimeSpan.FromSeconds(20), "the worker logged its start", () => Task.FromResult("no start log"));
        await Task.Delay(500, TestContext.Current.CancellationToken);
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        var warning = logger.Collector.GetSnapshot().Where(r => r.Level == LogLevel.Warning && r.Message.Contains("MessageRetentionPeriod=345600s", StringComparison.Ordinal)).ToList();
        Assert.Equal(warns, warning.Count == 1);
    }
}
