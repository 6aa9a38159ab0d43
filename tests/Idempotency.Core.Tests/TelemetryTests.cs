using System.Diagnostics;
using Idempotency.Diagnostics;
using Idempotency.InMemory;
using Microsoft.Extensions.Diagnostics.Metrics.Testing;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

public sealed class TelemetryTests
{
    [Fact]
    public async Task Counters_report_processed_duplicates_failures_and_mismatches_for_the_handler()
    {
        var handler = "metrics-" + Guid.NewGuid().ToString("N")[..8];
        using var processed = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.messages.processed");
        using var duplicates = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.messages.duplicate");
        using var failed = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.messages.failed");
        using var mismatches = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.messages.payload_mismatch");
        using var durations = new MetricCollector<double>(null, IdempotencyTelemetry.MeterName, "idempotency.handler.duration");
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((c, _) =>
            c.Key.StartsWith("bad", StringComparison.Ordinal) ? throw new InvalidOperationException() : ValueTask.CompletedTask), Options(handler));

        for (var i = 0; i < 5; i++)
        {
            await processor.ProcessAsync(Create($"k{i}"), TestContext.Current.CancellationToken);
        }

        await processor.ProcessAsync(Create("k0"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(new IncomingMessage("k1", "payload"u8.ToArray()) { Redelivered = true, Destination = "orders", Broker = "test" }, TestContext.Current.CancellationToken);
        await processor.ProcessAsync(Create("k2", "other payload"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(Create("bad-1"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(Create("bad-2"), TestContext.Current.CancellationToken);

        long Sum(MetricCollector<long> c, Func<IReadOnlyDictionary<string, object?>, bool>? filter = null) =>
            c.GetMeasurementSnapshot().Where(m => Equals(m.Tags[IdempotencyTags.Handler], handler) && (filter?.Invoke(m.Tags) ?? true)).Sum(m => m.Value);

        Assert.Equal(5, Sum(processed));
        Assert.Equal(3, Sum(duplicates));
        Assert.Equal(1, Sum(duplicates, t => Equals(t[IdempotencyTags.DuplicateCause], "redelivery")));
        Assert.Equal(2, Sum(duplicates, t => Equals(t[IdempotencyTags.DuplicateCause], "republish")));
        Assert.Equal(1, Sum(mismatches));
        Assert.Equal(2, Sum(failed));
        Assert.Equal(5, durations.GetMeasurementSnapshot().Count(m => Equals(m.Tags[IdempotencyTags.Handler], handler)));
    }

    [Fact]
    public async Task An_ordered_batch_that_stops_at_a_mismatch_counts_the_duplicates_it_looked_up_after_the_stop_only_when_they_are_processed()
    {
        var handler = "metrics-stop-" + Guid.NewGuid().ToString("N")[..8];
        using var duplicates = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.messages.duplicate");
        using var mismatches = new MetricCollector<long>(null, IdempotencyTelemetry.MeterName, "idempotency.messages.payload_mismatch");
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options(handler, PayloadMismatchPolicy.Quarantine));
        var ct = TestContext.Current.CancellationToken;
        for (var i = 0; i < 4; i++)
        {
            await processor.ProcessAsync(Create($"k{i}"), ct);
        }

        // Enough single duplicates that the next batch is looked up before it is claimed.
        for (var i = 0; i < 40; i++)
        {
            await processor.ProcessAsync(Create($"k{i % 4}"), ct);
        }

        long Sum(MetricCollector<long> c) => c.GetMeasurementSnapshot().Where(m => Equals(m.Tags[IdempotencyTags.Handler], handler)).Sum(m => m.Value);
        var before = Sum(duplicates);

        // k1 arrives with another payload: in order, the batch ends there, and k2, k3 come back in the next call.
        var first = await processor.ProcessBatchInOrderAsync([Create("k0"), Create("k1", "other payload"), Create("k2"), Create("k3")], ct);
        Assert.Equal([ProcessingOutcome.Duplicate, ProcessingOutcome.PayloadMismatch], first.Select(r => r.Outcome));
        var rest = await processor.ProcessBatchInOrderAsync([Create("k2"), Create("k3")], ct);
        Assert.Equal([ProcessingOutcome.Duplicate, ProcessingOutcome.Duplicate], rest.Select(r => r.Outcome));

        // One count per result handed back: k0, k2 and k3 once each, the mismatch once.
        Assert.Equal(3, Sum(duplicates) - before);
        Assert.Equal(1, Sum(mismatches));
    }

    [Fact]
    public async Task Processing_span_continues_the_trace_from_the_message_headers()
    {
        var handler = "trace-" + Guid.NewGuid().ToString("N")[..8];
        var spans = new List<Activity>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = s => s.Name == IdempotencyTelemetry.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = a => { lock (spans) { spans.Add(a); } },
        };
        ActivitySource.AddActivityListener(listener);
        var traceId = ActivityTraceId.CreateRandom();
        var parentSpan = ActivitySpanId.CreateRandom();
        var message = new IncomingMessage("k", "x"u8.ToArray())
        {
            Destination = "orders",
            Broker = "test",
            Headers = new Dictionary<string, string> { ["traceparent"] = $"00-{traceId}-{parentSpan}-01" },
        };

        await new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options(handler)).ProcessAsync(message, TestContext.Current.CancellationToken);

        Activity[] captured;
        lock (spans)
        {
            captured = [.. spans];
        }

        var span = Assert.Single(captured, s => Equals(s.GetTagItem(IdempotencyTags.Handler), handler));
        Assert.Equal(traceId, span.TraceId);
        Assert.Equal(parentSpan, span.ParentSpanId);
        Assert.Equal(ActivityKind.Consumer, span.Kind);
        Assert.Equal("processed", span.GetTagItem(IdempotencyTags.Outcome));
    }
}
