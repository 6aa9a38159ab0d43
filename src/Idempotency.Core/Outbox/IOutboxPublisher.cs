namespace Idempotency.Outbox;

/// <summary>Publishes outbox messages to a broker. Broker packages implement it (Kafka, RabbitMQ, SQS).</summary>
public interface IOutboxPublisher
{
    /// <summary>
    /// Publishes the messages in order and returns only when the broker has confirmed every one of them
    /// (Kafka acks=all, RabbitMQ publisher confirms, SQS SendMessageBatch success). Each message carries its
    /// <see cref="OutboxRecord.MessageId"/> as the idempotency key.
    /// </summary>
    /// <param name="messages">The messages, in id order.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when all are confirmed.</returns>
    /// <exception cref="Exception">Any failure: the relay marks nothing as sent and publishes the batch again later, which the consumer downstream deduplicates.</exception>
    ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken);
}
