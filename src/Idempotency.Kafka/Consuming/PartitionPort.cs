using System.Globalization;
using Confluent.Kafka;
using Idempotency.Delivery;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// Kafka's ack model for the <see cref="DeliveryEngine"/>, for one partition: a partition is a log, so a message is
/// retried in place and settling it only lets the partition's position move on (the worker reports it to the offset
/// tracker, in order); a dead-letter goes to the dead-letter topic; intake pauses the partition at the broker.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
internal sealed class PartitionPort<TKey, TValue> : IDeliveryPort<KafkaDelivery<TKey, TValue>>
{
    private readonly PartitionLane<TKey, TValue> _lane;
    private readonly LaneContext<TKey, TValue> _context;

    /// <summary>Creates the port of a lane.</summary>
    /// <param name="lane">The lane.</param>
    /// <param name="context">What the consumer's lanes share.</param>
    public PartitionPort(PartitionLane<TKey, TValue> lane, LaneContext<TKey, TValue> context)
    {
        _lane = lane;
        _context = context;
    }

    /// <inheritdoc/>
    public bool RetriesInPlace => true;

    /// <inheritdoc/>
    public string Broker => "kafka";

    /// <inheritdoc/>
    public string Destination => _lane.Partition.Topic;

    /// <inheritdoc/>
    public string AttemptId(KafkaDelivery<TKey, TValue> delivery) => string.Create(CultureInfo.InvariantCulture, $"{_lane.Name}@{delivery.Offset}");

    /// <inheritdoc/>
    public ValueTask AcknowledgeAsync(KafkaDelivery<TKey, TValue> delivery, ProcessingResult result, CancellationToken cancellationToken)
    {
        _lane.ResumeAfterStore();
        _context.Hooks.ResultObserver?.Invoke(result);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc/>
    public async ValueTask<bool> DeadLetterAsync(KafkaDelivery<TKey, TValue> delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
    {
        _lane.ResumeAfterStore();
        _context.Hooks.ResultObserver?.Invoke(result);
        var reason = DeadLetterHeaders.Create(result, decision, _context.Processor.HandlerName, attempts);

        // Returns only once the dead-letter topic took it; a stop of the partition ends the retries by cancellation.
        if (delivery.Error is { } selectorError && delivery.Raw is null)
        {
            // The body selector's own error rather than its wrapper; the value's bytes (if it has any) follow below.
            reason[DeadLetterHeaders.ErrorType] = selectorError.GetType().FullName!;
            reason[DeadLetterHeaders.ErrorMessage] = selectorError.Message.Length > 1024 ? selectorError.Message[..1024] : selectorError.Message;
        }
        else if (delivery.IsUnreadable)
        {
            // The raw bytes as they were on the topic, and the deserializer's own error rather than its wrapper.
            var raw = delivery.Raw!;
            var error = (ConsumeException)delivery.Error!;
            reason[DeadLetterHeaders.ErrorType] = error.InnerException?.GetType().FullName ?? error.GetType().FullName!;
            reason[DeadLetterHeaders.ErrorMessage] = error.Error.Reason;
            await _context.DeadLetters.WriteAsync(raw.TopicPartitionOffset, delivery.Timestamp, raw.Message.Key, raw.Message.Value, raw.Message.Headers, reason, attempts, _lane.StopTaking.Token).ConfigureAwait(false);
            return true;
        }

        var record = delivery.Result!;
        await _context.DeadLetters.WriteAsync(record.TopicPartitionOffset, delivery.Timestamp, KafkaMessageReader<TKey, TValue>.KeyBytes(record.Message.Key), result.Message.Body.ToArray(), record.Message.Headers, reason, attempts, _lane.StopTaking.Token).ConfigureAwait(false);
        return true;
    }

    /// <inheritdoc/>
    public ValueTask ReturnAsync(KafkaDelivery<TKey, TValue> delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken) =>
        throw new InvalidOperationException("A Kafka partition retries in place; nothing is returned to the broker.");

    /// <inheritdoc/>
    public void PauseIntake() => _lane.PauseForStore();

    /// <inheritdoc/>
    public void ResumeIntake() => _lane.ResumeAfterStore();
}
