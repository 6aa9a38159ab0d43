using Confluent.Kafka;
using Idempotency.Kafka;

namespace Idempotency.Benchmarks.Shared;

/// <summary>Produces a benchmark's messages: the key as both Kafka key and idempotency-key header, waiting out a full local queue.</summary>
internal static class KafkaLoad
{
    /// <summary>Produces every message and flushes; throws when the flush does not finish within a minute.</summary>
    /// <param name="bootstrapServers">The cluster.</param>
    /// <param name="topic">The topic.</param>
    /// <param name="messages">Key and body of each message, in order.</param>
    /// <returns>How many messages were produced.</returns>
    public static int Produce(string bootstrapServers, string topic, IEnumerable<(byte[] Key, byte[] Body)> messages)
    {
        using var producer = new ProducerBuilder<byte[]?, byte[]?>(new ProducerConfig { BootstrapServers = bootstrapServers, LingerMs = 20, BatchNumMessages = 10_000 }).Build();
        var produced = 0;
        foreach (var (key, body) in messages)
        {
            while (true)
            {
                try
                {
                    producer.Produce(topic, new Message<byte[]?, byte[]?> { Key = key, Value = body, Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, key } } });
                    break;
                }
                catch (ProduceException<byte[]?, byte[]?> e) when (e.Error.Code == ErrorCode.Local_QueueFull)
                {
                    producer.Poll(TimeSpan.FromMilliseconds(50));
                }
            }

            produced++;
        }

        if (producer.Flush(TimeSpan.FromSeconds(60)) != 0)
        {
            throw new InvalidOperationException("produce did not finish");
        }

        return produced;
    }
}
