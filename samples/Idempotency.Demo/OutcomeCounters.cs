using System.Diagnostics.Metrics;
using Idempotency.Diagnostics;

namespace Idempotency.Demo;

/// <summary>
/// Counts the pipeline's own outcome metrics (meter <c>Idempotency</c>) for one handler name, so every broker's row is
/// counted the same way: what the idempotent consumer saw, not what the demo thinks it sent.
/// </summary>
internal sealed class OutcomeCounters : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly string _handler;
    private long _processed, _duplicates, _failed, _deadLettered;

    public OutcomeCounters(string handler)
    {
        _handler = handler;
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == IdempotencyTelemetry.MeterName && instrument.Name is
                "idempotency.messages.processed" or "idempotency.messages.duplicate" or "idempotency.messages.failed" or "idempotency.messages.dead_lettered")
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<long>(OnMeasurement);
        _listener.Start();
    }

    /// <summary>Handler ran and its transaction committed.</summary>
    public long Processed => Interlocked.Read(ref _processed);

    /// <summary>Key already committed: skipped (and acknowledged).</summary>
    public long Duplicates => Interlocked.Read(ref _duplicates);

    /// <summary>Attempts that did not commit (crashed handler, retry, lease held elsewhere).</summary>
    public long Failed => Interlocked.Read(ref _failed);

    public long DeadLettered => Interlocked.Read(ref _deadLettered);

    /// <summary>Every processing attempt the consumer made: first deliveries and redeliveries.</summary>
    public long Delivered => Processed + Duplicates + Failed;

    public void Dispose() => _listener.Dispose();

    private void OnMeasurement(Instrument instrument, long value, ReadOnlySpan<KeyValuePair<string, object?>> tags, object? state)
    {
        foreach (var tag in tags)
        {
            if (tag.Key == IdempotencyTags.Handler)
            {
                if (!string.Equals(tag.Value as string, _handler, StringComparison.Ordinal))
                {
                    return;
                }

                switch (instrument.Name)
                {
                    case "idempotency.messages.processed": Interlocked.Add(ref _processed, value); break;
                    case "idempotency.messages.duplicate": Interlocked.Add(ref _duplicates, value); break;
                    case "idempotency.messages.failed": Interlocked.Add(ref _failed, value); break;
                    default: Interlocked.Add(ref _deadLettered, value); break;
                }

                return;
            }
        }
    }
}
