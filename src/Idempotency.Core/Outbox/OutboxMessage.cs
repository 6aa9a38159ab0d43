namespace Idempotency.Outbox;

/// <summary>A message a handler sends on, written in the same transaction as its effects and published after the commit.</summary>
/// <param name="Destination">The topic or queue to publish to.</param>
/// <param name="Key">The message key (Kafka key, ordering key); messages with one key are published in order.</param>
/// <param name="Payload">The body.</param>
/// <param name="Headers">Optional text headers.</param>
public sealed record OutboxMessage(string Destination, string Key, ReadOnlyMemory<byte> Payload, IReadOnlyDictionary<string, string>? Headers = null);
