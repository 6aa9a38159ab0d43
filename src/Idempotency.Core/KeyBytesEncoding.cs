namespace Idempotency;

/// <summary>How an adapter turns a key that arrives as bytes (a Kafka header, a binary RabbitMQ header) into the key string.</summary>
public enum KeyBytesEncoding
{
    /// <summary>The bytes must be valid UTF-8 and are decoded exactly; any other bytes make the message's key invalid (never a lossy decode).</summary>
    Utf8 = 0,

    /// <summary>Any bytes, written as lowercase hexadecimal.</summary>
    Hex = 1,

    /// <summary>Any bytes, written as standard Base64.</summary>
    Base64 = 2,
}
