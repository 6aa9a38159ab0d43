using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Idempotency.Diagnostics;

/// <summary>The library's instruments. Adapters record broker-side events (dead-letters, redeliveries) through the public methods.</summary>
internal static class IdempotencyMetrics
{
    private static readonly Counter<long> Processed = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.messages.processed", "{message}", "Messages whose handler ran and committed.");

    private static readonly Counter<long> Duplicates = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.messages.duplicate", "{message}", "Messages skipped because their key was already processed.");

    private static readonly Counter<long> Mismatches = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.messages.payload_mismatch", "{message}", "Known keys that arrived with a different payload.");

    private static readonly Counter<long> Failures = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.messages.failed", "{message}", "Processing attempts that did not commit: handler failures, store outages, invalid keys, leases held elsewhere.");

    private static readonly Counter<long> DeadLetters = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.messages.dead_lettered", "{message}", "Messages sent to a dead-letter destination.");

    private static readonly Counter<long> Redeliveries = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.messages.redelivered", "{message}", "Deliveries the broker marked as redelivered.");

    private static readonly Histogram<double> HandlerDuration = IdempotencyTelemetry.Meter.CreateHistogram<double>(
        "idempotency.handler.duration", "s", "How long handlers ran.");

    private static readonly Histogram<double> StoreDuration = IdempotencyTelemetry.Meter.CreateHistogram<double>(
        "idempotency.store.duration", "s", "Latency of store operations (begin, claim, commit).");

    private static readonly Histogram<double> Lag = IdempotencyTelemetry.Meter.CreateHistogram<double>(
        "idempotency.message.lag", "s", "End-to-end lag: processing time minus the message's timestamp.");

    private static readonly Counter<long> KeysForgotten = IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.keys.forgotten", "{key}", "Keys an operator asked to forget (IdempotencyStoreOperations.ForgetKeyAsync), by whether a record was deleted.");

    private static readonly UpDownCounter<long> InFlight = IdempotencyTelemetry.Meter.CreateUpDownCounter<long>(
        "idempotency.messages.in_flight", "{message}", "Messages being processed right now.");

    /// <summary>Counts a message sent to a dead-letter destination.</summary>
    /// <param name="broker">The broker name.</param>
    /// <param name="handler">The handler name.</param>
    /// <param name="destination">The source topic or queue.</param>
    /// <param name="reason">A short reason code (<c>handler_failed</c>, <c>invalid_key</c>, <c>payload_mismatch</c>).</param>
    public static void RecordDeadLettered(string broker, string handler, string destination, string reason)
    {
        var tags = Tags(broker, handler, destination);
        tags.Add(IdempotencyTags.Reason, reason);
        DeadLetters.Add(1, tags);
    }

    /// <summary>Counts a delivery the broker marked as redelivered.</summary>
    /// <param name="broker">The broker name.</param>
    /// <param name="handler">The handler name.</param>
    /// <param name="destination">The source topic or queue.</param>
    public static void RecordRedelivered(string broker, string handler, string destination) =>
        Redeliveries.Add(1, Tags(broker, handler, destination));

    internal static void RecordKeyForgotten(string store, string handler, bool forgotten) =>
        KeysForgotten.Add(1, new TagList
        {
            { IdempotencyTags.Store, store },
            { IdempotencyTags.Handler, handler },
            { IdempotencyTags.Outcome, forgotten ? "forgotten" : "not_found" },
        });

    internal static void RecordStoreOperation(string store, string operation, TimeSpan elapsed)
    {
        if (StoreDuration.Enabled)
        {
            StoreDuration.Record(elapsed.TotalSeconds, new KeyValuePair<string, object?>(IdempotencyTags.Store, store), new KeyValuePair<string, object?>(IdempotencyTags.Operation, operation));
        }
    }

    internal static void RecordHandlerDuration(IncomingMessage message, string handler, TimeSpan elapsed)
    {
        if (HandlerDuration.Enabled)
        {
            HandlerDuration.Record(elapsed.TotalSeconds, Tags(message.Broker, handler, message.Destination));
        }
    }

    internal static void AddInFlight(IncomingMessage message, string handler, int delta)
    {
        if (InFlight.Enabled)
        {
            InFlight.Add(delta, Tags(message.Broker, handler, message.Destination));
        }
    }

    internal static void RecordResult(ProcessingResult result, string handler, DateTimeOffset now)
    {
        var message = result.Message;
        var tags = Tags(message.Broker, handler, message.Destination);
        tags.Add(IdempotencyTags.Outcome, OutcomeName(result.Outcome));
        switch (result.Outcome)
        {
            case ProcessingOutcome.Processed:
                Processed.Add(1, tags);
                if (message.Timestamp is { } timestamp && Lag.Enabled)
                {
                    Lag.Record(Math.Max(0, (now - timestamp).TotalSeconds), Tags(message.Broker, handler, message.Destination));
                }

                break;
            case ProcessingOutcome.Duplicate:
                tags.Add(IdempotencyTags.DuplicateCause, DuplicateCause(message));
                Duplicates.Add(1, tags);
                if (result.PayloadDiffers)
                {
                    Mismatches.Add(1, tags);
                }

                break;
            case ProcessingOutcome.PayloadMismatch:
                Mismatches.Add(1, tags);
                break;
            default:
                Failures.Add(1, tags);
                break;
        }
    }

    /// <summary>Returns the snake-case name of an outcome, as used in the <see cref="IdempotencyTags.Outcome"/> tag.</summary>
    /// <param name="outcome">The outcome.</param>
    /// <returns>The tag value.</returns>
    public static string OutcomeName(ProcessingOutcome outcome) => outcome switch
    {
        ProcessingOutcome.Processed => "processed",
        ProcessingOutcome.Duplicate => "duplicate",
        ProcessingOutcome.PayloadMismatch => "payload_mismatch",
        ProcessingOutcome.Failed => "failed",
        ProcessingOutcome.InProgress => "in_progress",
        ProcessingOutcome.StoreUnavailable => "store_unavailable",
        ProcessingOutcome.InvalidKey => "invalid_key",
        ProcessingOutcome.StoreMisconfigured => "store_misconfigured",
        ProcessingOutcome.LeaseLost => "lease_lost",
        _ => "unknown",
    };

    internal static string DuplicateCause(IncomingMessage message) =>
        message.RedeliveryCause ?? (message.Redelivered || message.DeliveryAttempt > 1 ? "redelivery" : "republish");

    private static TagList Tags(string broker, string handler, string destination) => new()
    {
        { IdempotencyTags.Broker, broker },
        { IdempotencyTags.Handler, handler },
        { IdempotencyTags.Destination, destination },
    };
}
