namespace Idempotency.Delivery;

/// <summary>
/// What a broker adapter implements for the <see cref="DeliveryEngine"/>: the translation of its broker's ack model.
/// The engine decides (settle, retry, dead-letter, wait for the store) and keeps the books (attempts, the store gate);
/// the port only carries a decision out on the broker.
/// </summary>
/// <typeparam name="TDelivery">The adapter's handle of one delivered message.</typeparam>
public interface IDeliveryPort<in TDelivery>
{
    /// <summary>
    /// Gets a value indicating whether a message that must be tried again stays in its lane and is processed again in
    /// place (Kafka: a partition is a log, its position may not pass the message), rather than going back to the broker.
    /// </summary>
    bool RetriesInPlace { get; }

    /// <summary>Gets the broker's name for telemetry (<c>kafka</c>, <c>rabbitmq</c>, <c>aws_sqs</c>).</summary>
    string Broker { get; }

    /// <summary>Gets the name of the consumed destination (topic, queue) for telemetry.</summary>
    string Destination { get; }

    /// <summary>Returns the id under which the engine counts a message's attempts across its redeliveries (the message id, or a hash of its key).</summary>
    /// <param name="delivery">The delivery.</param>
    /// <returns>The id.</returns>
    string AttemptId(TDelivery delivery);

    /// <summary>Settles a message whose effects committed (now or before): ack, delete, or mark its position done.</summary>
    /// <param name="delivery">The delivery.</param>
    /// <param name="result">Its processing result (<see cref="ProcessingOutcome.Processed"/> or <see cref="ProcessingOutcome.Duplicate"/>).</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when settled (or when the broker call failed: the message then comes back as a duplicate).</returns>
    ValueTask AcknowledgeAsync(TDelivery delivery, ProcessingResult result, CancellationToken cancellationToken);

    /// <summary>Sends a message to the dead-letter destination with the reason, then settles it.</summary>
    /// <param name="delivery">The delivery.</param>
    /// <param name="result">Its processing result.</param>
    /// <param name="decision">The decision, with the reason code and reason.</param>
    /// <param name="attempts">The handler attempts spent.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when dead-lettered and settled; <see langword="false"/> when the dead-letter could not be sent (the message is then tried again).</returns>
    ValueTask<bool> DeadLetterAsync(TDelivery delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken);

    /// <summary>Gives a message back to the broker, to be delivered again after <paramref name="delay"/> (not used when <see cref="RetriesInPlace"/>).</summary>
    /// <param name="delivery">The delivery.</param>
    /// <param name="delay">How long the broker should keep it back (or the port wait before returning it).</param>
    /// <param name="attemptSpent">Whether the handler failed (an attempt spent), rather than the store or another worker holding it up.</param>
    /// <param name="cancellationToken">Cuts a wait short (the message is then returned at once).</param>
    /// <returns>A task that completes when returned.</returns>
    ValueTask ReturnAsync(TDelivery delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken);

    /// <summary>Stops taking new messages from the broker while the store is down or misconfigured.</summary>
    void PauseIntake();

    /// <summary>Takes messages again once the store answers.</summary>
    void ResumeIntake();
}
