using Idempotency.Diagnostics;
using Idempotency.InMemory;
using Idempotency.Storage;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using Microsoft.Extensions.Logging.Testing;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

public sealed class ForgetKeyTests
{
    [Fact]
    public async Task Forgotten_key_runs_the_handler_again_and_the_action_is_logged_and_counted()
    {
        using var forgotten = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.keys.forgotten");
        var logger = new FakeLogger();
        var store = new InMemoryIdempotencyStore();
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => { runs++; return ValueTask.CompletedTask; }), Options("orders"));
        await processor.ProcessAsync(Create("k"), TestContext.Current.CancellationToken);

        Assert.True(await store.ForgetKeyAsync("orders", "k", logger, TestContext.Current.CancellationToken));
        Assert.False(await store.ForgetKeyAsync("orders", "k", logger, TestContext.Current.CancellationToken));
        var again = await processor.ProcessAsync(Create("k"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, again.Outcome);
        Assert.Equal(2, runs);
        Assert.Equal(["forgotten", "not_found"], forgotten.GetMeasurementSnapshot().Select(m => (string)m.Tags[IdempotencyTags.Outcome]!));
        Assert.All(forgotten.GetMeasurementSnapshot(), m => Assert.Equal("orders", m.Tags[IdempotencyTags.Handler]));
        Assert.Equal(2, logger.Collector.Count);
        Assert.Equal(1012, logger.Collector.LatestRecord.Id.Id);
        Assert.Contains("k", logger.Collector.LatestRecord.Message);
    }

    [Fact]
    public async Task Store_without_the_admin_interface_says_so()
    {
        var store = new ClaimFirstOnlyStore();
        await Assert.ThrowsAsync<NotSupportedException>(async () => await store.ForgetKeyAsync("h", "k", cancellationToken: TestContext.Current.CancellationToken));
    }
}
