namespace Idempotency.Kafka;

/// <summary>Where an <see cref="IdempotentKafkaConsumer{TKey, TValue}"/> keeps the group's offsets.</summary>
public enum KafkaOffsetStorage
{
    /// <summary>Committed to Kafka only (lazily); what a lost commit leaves behind is re-read and skipped as duplicates.</summary>
    Broker = 0,

    /// <summary>
    /// Also written to the store, in the same transaction as each message's effects (the store must implement
    /// <see cref="Idempotency.Storage.IConsumerPositionStore"/>, as the PostgreSQL store does), and on assignment the
    /// consumer starts after the later of the stored and the committed offset: a lost broker commit redoes nothing.
    /// Offsets are still committed to Kafka (tools and lag monitoring read them there).
    /// </summary>
    BrokerAndStore = 1,
}
