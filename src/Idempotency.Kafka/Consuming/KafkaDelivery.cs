using Confluent.Kafka;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// One fetched message as its partition lane holds it: the deserialized record, or the raw record of a message the
/// consumer could not deserialize (it keeps its place in the partition and is dead-lettered there).
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <param name="Result">The deserialized record; null for an unreadable message.</param>
/// <param name="Raw">The raw record of an unreadable message.</param>
/// <param name="Error">Why it could not be deserialized.</param>
internal readonly record struct KafkaDelivery<TKey, TValue>(ConsumeResult<TKey, TValue>? Result, ConsumeResult<byte[], byte[]>? Raw, ConsumeException? Error)
{
    /// <summary>Gets a value indicating whether this process saw the offset before (a rebalance handed it out again).</summary>
    public bool Reread { get; init; }

    /// <summary>Gets a value indicating whether the consumer could not deserialize the message.</summary>
    public bool IsUnreadable => Error is not null;

    /// <summary>Gets the message's offset in its partition.</summary>
    public long Offset => Result?.Offset.Value ?? Raw!.Offset.Value;

    /// <summary>Gets the message's timestamp.</summary>
    public Timestamp? Timestamp => Result?.Message.Timestamp ?? Raw?.Message.Timestamp;

    /// <summary>Wraps a deserialized record.</summary>
    /// <param name="result">The record.</param>
    /// <returns>The delivery.</returns>
    public static KafkaDelivery<TKey, TValue> Of(ConsumeResult<TKey, TValue> result) => new(result, null, null);

    /// <summary>Wraps the raw record of a message that failed deserialization.</summary>
    /// <param name="raw">The raw record.</param>
    /// <param name="error">The deserialization error.</param>
    /// <returns>The delivery.</returns>
    public static KafkaDelivery<TKey, TValue> Unreadable(ConsumeResult<byte[], byte[]> raw, ConsumeException error) => new(null, raw, error);
}
