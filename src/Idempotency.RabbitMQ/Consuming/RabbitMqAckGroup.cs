using Idempotency.Delivery;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// The port one worker settles a batch through: the engine's acks of the committed deliveries are collected and sent
/// together by <see cref="FlushAsync"/> (one <c>basic.ack(multiple: true)</c> when the tags allow it); everything else,
/// and any ack after the flush, goes straight to the consumer's <see cref="RabbitMqPort"/>.
/// </summary>
internal sealed class RabbitMqAckGroup(RabbitMqPort port) : IDeliveryPort<RabbitMqWork>
{
    private readonly List<RabbitMqWork> _committed = [];
    private bool _flushed;

    public bool RetriesInPlace => port.RetriesInPlace;

    public string Broker => port.Broker;

    public string Destination => port.Destination;

    public string AttemptId(RabbitMqWork delivery) => port.AttemptId(delivery);

    public ValueTask AcknowledgeAsync(RabbitMqWork delivery, ProcessingResult result, CancellationToken cancellationToken)
    {
        if (_flushed)
        {
            return port.AcknowledgeAsync(delivery, result, cancellationToken);
        }

        _committed.Add(delivery);
        return ValueTask.CompletedTask;
    }

    public ValueTask<bool> DeadLetterAsync(RabbitMqWork delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken) =>
        port.DeadLetterAsync(delivery, result, decision, attempts, cancellationToken);

    public ValueTask ReturnAsync(RabbitMqWork delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken) =>
        port.ReturnAsync(delivery, delay, attemptSpent, cancellationToken);

    public void PauseIntake() => port.PauseIntake();

    public void ResumeIntake() => port.ResumeIntake();

    /// <summary>Sends the collected acks; later acks go out as they come.</summary>
    public ValueTask FlushAsync()
    {
        _flushed = true;
        return _committed.Count == 0 ? ValueTask.CompletedTask : port.AcknowledgeAsync(_committed);
    }
}
