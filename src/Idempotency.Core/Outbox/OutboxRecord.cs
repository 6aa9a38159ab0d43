namespace Idempotency.Outbox;

/// <summary>A stored outgoing message as the relay reads it.</summary>
/// <param name="Id">The row's sequence number; messages are published in this order.</param>
/// <param name="MessageId">The stable id the consumer downstream deduplicates on (its idempotency key).</param>
/// <param name="Destination">The topic or queue.</param>
/// <param name="Key">The message key; messages with one key are published in order.</param>
/// <param name="Payload">The body.</param>
/// <param name="Headers">Text headers the handler added.</param>
/// <param name="CreatedAt">When the handler's transaction wrote it.</param>
public sealed record OutboxRecord(long Id, Guid MessageId, string Destination, string Key, ReadOnlyMemory<byte> Payload, IReadOnlyDictionary<string, string>? Headers, DateTimeOffset CreatedAt)
{
    /// <summary>The header (or attribute) name under which publishers send <see cref="MessageId"/>, the one the consumer adapters read by default.</summary>
    public const string IdempotencyKeyHeader = "idempotency-key";
}
