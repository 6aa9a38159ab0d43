namespace Idempotency.Kafka;

/// <summary>placeholder</summary>
public sealed class KafkaIdempotencyOptions
{
}
