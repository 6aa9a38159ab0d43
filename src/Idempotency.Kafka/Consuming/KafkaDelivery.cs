using Confluent.Kafka;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// One fetched message as its partition lane holds it: the deserialized record with its selected body, or a message
/// that cannot be read (the consumer could not deserialize it, or the body selector threw on it): that one keeps its
/// place in the partition and is dead-lettered there.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <param name="Result">The deserialized record; null when it could not be deserialized.</param>
/// <param name="Raw">The raw record of a message that could not be deserialized.</param>
/// <param name="Error">Why it cannot be read: the deserializer's <see cref="ConsumeException"/>, or the body selector's exception.</param>
internal readonly record struct KafkaDelivery<TKey, TValue>(ConsumeResult<TKey, TValue>? Result, ConsumeResult<byte[], byte[]>? Raw, Exception? Error)
{
    /// <summary>Gets the bytes the body selector (or the raw value) gave, selected once when the message was read.</summary>
    public ReadOnlyMemory<byte> Body { get; init; }

    /// <summary>Gets a value indicating whether this process saw the offset before (a rebalance handed it out again).</summary>
    public bool Reread { get; init; }

    /// <summary>Gets a value indicating whether the message cannot be read (not deserialized, or its body selector threw).</summary>
    public bool IsUnreadable => Error is not null;

    /// <summary>Gets the message's offset in its partition.</summary>
    public long Offset => Result?.Offset.Value ?? Raw!.Offset.Value;

    /// <summary>Gets the message's timestamp.</summary>
    public Timestamp? Timestamp => Result?.Message.Timestamp ?? Raw?.Message.Timestamp;

    /// <summary>Wraps a deserialized record.</summary>
    /// <param name="result">The record.</param>
    /// <param name="body">Its selected body.</param>
    /// <returns>The delivery.</returns>
    public static KafkaDelivery<TKey, TValue> Of(ConsumeResult<TKey, TValue> result, ReadOnlyMemory<byte> body) => new(result, null, null) { Body = body };

    /// <summary>Wraps a deserialized record whose body selector threw.</summary>
    /// <param name="result">The record.</param>
    /// <param name="error">The selector's exception.</param>
    /// <returns>The delivery.</returns>
    public static KafkaDelivery<TKey, TValue> Unselectable(ConsumeResult<TKey, TValue> result, Exception error) => new(result, null, error);

    /// <summary>Wraps the raw record of a message that failed deserialization.</summary>
    /// <param name="raw">The raw record.</param>
    /// <param name="error">The deserialization error.</param>
    /// <returns>The delivery.</returns>
    public static KafkaDelivery<TKey, TValue> Unreadable(ConsumeResult<byte[], byte[]> raw, ConsumeException error) => new(null, raw, error);
}
