namespace Idempotency.Kafka;

/// <summary>
/// Kafka-specific headers on a dead-lettered message, next to the common ones of
/// <see cref="Idempotency.Delivery.DeadLetterHeaders"/>. Values are UTF-8 text.
/// </summary>
public static class KafkaDeadLetterHeaders
{
    /// <summary>The source topic.</summary>
    public const string OriginalTopic = "x-original-topic";

    /// <summary>The source partition (decimal).</summary>
    public const string OriginalPartition = "x-original-partition";

    /// <summary>The source offset (decimal).</summary>
    public const string OriginalOffset = "x-original-offset";

    /// <summary>The source message's timestamp in Unix milliseconds (decimal), when it had one.</summary>
    public const string OriginalTimestamp = "x-original-timestamp";

    /// <summary>The reason code for a message the consumer could not deserialize.</summary>
    public const string DeserializationFailed = "deserialization_failed";
}
