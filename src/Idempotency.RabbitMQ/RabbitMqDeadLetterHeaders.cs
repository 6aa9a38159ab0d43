namespace Idempotency.RabbitMQ;

/// <summary>
/// RabbitMQ-specific headers a republished dead-letter carries next to the common
/// <see cref="Idempotency.Delivery.DeadLetterHeaders"/> (reason code, error, attempts, handler, key) and the original headers.
/// </summary>
public static class RabbitMqDeadLetterHeaders
{
    /// <summary>The queue the message was consumed from.</summary>
    public const string SourceQueue = "x-idempotency-source-queue";

    /// <summary>The exchange the message was originally published to.</summary>
    public const string SourceExchange = "x-idempotency-source-exchange";

    /// <summary>The routing key the message was originally published with.</summary>
    public const string SourceRoutingKey = "x-idempotency-source-routing-key";

    /// <summary>Whether the last delivery was a redelivery (<c>true</c>/<c>false</c>).</summary>
    public const string Redelivered = "x-idempotency-redelivered";
}
