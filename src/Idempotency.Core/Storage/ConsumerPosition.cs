namespace Idempotency.Storage;

/// <summary>
/// Where a consumer group stands in one partition of a stream: the offset (or sequence number) of a message the group
/// has processed. Broker-neutral: Kafka fills it with group id, topic, partition and offset.
/// </summary>
/// <param name="Group">The consumer group.</param>
/// <param name="Stream">The stream (a Kafka topic).</param>
/// <param name="Partition">The partition.</param>
/// <param name="Offset">The offset of the processed message (not the next one).</param>
public readonly record struct ConsumerPosition(string Group, string Stream, int Partition, long Offset);
