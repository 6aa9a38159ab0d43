using System.Globalization;
using System.Text;
using Confluent.Kafka;
using Idempotency.Delivery;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// Produces dead-letters: the original key, value and headers, the engine's reason headers and the record's origin
/// (topic, partition, offset, timestamp). A produce that fails is retried until the dead-letter topic acknowledges it,
/// because the source offset may move past the message only then.
/// </summary>
internal sealed class KafkaDeadLetterWriter
{
    private readonly IProducer<byte[]?, byte[]?> _producer;
    private readonly KafkaIdempotencyOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;

    /// <summary>Creates the writer.</summary>
    /// <param name="producer">The dead-letter producer.</param>
    /// <param name="options">The options (dead-letter topic, produce backoff).</param>
    /// <param name="logger">The logger.</param>
    /// <param name="time">The clock of the backoff.</param>
    public KafkaDeadLetterWriter(IProducer<byte[]?, byte[]?> producer, KafkaIdempotencyOptions options, ILogger logger, TimeProvider time)
    {
        _producer = producer;
        _options = options;
        _logger = logger;
        _time = time;
    }

    /// <summary>Builds an idempotent producer (acks=all) on the consumer's cluster, with its connection and security settings only.</summary>
    /// <param name="config">The consumer configuration.</param>
    /// <returns>The producer.</returns>
    public static IProducer<byte[]?, byte[]?> BuildProducer(ConsumerConfig config)
    {
        var producerConfig = new ProducerConfig { Acks = Acks.All, EnableIdempotence = true, LingerMs = 1 };
        foreach (var (key, value) in config)
        {
            // Connection and security settings only; consumer settings would draw warnings from librdkafka.
            if (key is "bootstrap.servers" or "client.id" or "security.protocol" || key.StartsWith("sasl.", StringComparison.Ordinal) || key.StartsWith("ssl.", StringComparison.Ordinal))
            {
                producerConfig.Set(key, value);
            }
        }

        return new ProducerBuilder<byte[]?, byte[]?>(producerConfig).Build();
    }

    /// <summary>Builds the dead-letter's headers: the original ones, then <paramref name="reason"/>, then the origin.</summary>
    /// <param name="source">Where the message came from.</param>
    /// <param name="timestamp">Its timestamp, if it had one.</param>
    /// <param name="original">Its own headers.</param>
    /// <param name="reason">The reason headers (<see cref="DeadLetterHeaders"/>).</param>
    /// <returns>The headers.</returns>
    public static Headers CreateHeaders(TopicPartitionOffset source, Timestamp? timestamp, Headers? original, IReadOnlyDictionary<string, string> reason)
    {
        var headers = new Headers();
        if (original is not null)
        {
            foreach (var header in original)
            {
                headers.Add(header.Key, header.GetValueBytes());
            }
        }

        foreach (var (name, text) in reason)
        {
            headers.Add(name, Encoding.UTF8.GetBytes(text));
        }

        headers.Add(KafkaDeadLetterHeaders.OriginalTopic, Encoding.UTF8.GetBytes(source.Topic));
        headers.Add(KafkaDeadLetterHeaders.OriginalPartition, Encoding.UTF8.GetBytes(source.Partition.Value.ToString(CultureInfo.InvariantCulture)));
        headers.Add(KafkaDeadLetterHeaders.OriginalOffset, Encoding.UTF8.GetBytes(source.Offset.Value.ToString(CultureInfo.InvariantCulture)));
        if (timestamp is { Type: not TimestampType.NotAvailable } stamp)
        {
            headers.Add(KafkaDeadLetterHeaders.OriginalTimestamp, Encoding.UTF8.GetBytes(stamp.UnixTimestampMs.ToString(CultureInfo.InvariantCulture)));
        }

        return headers;
    }

    /// <summary>Produces a dead-letter and waits for the dead-letter topic's acknowledgement, retrying failed produces.</summary>
    /// <param name="source">Where the message came from.</param>
    /// <param name="timestamp">Its timestamp, if it had one.</param>
    /// <param name="key">Its key bytes.</param>
    /// <param name="value">Its value bytes.</param>
    /// <param name="original">Its own headers.</param>
    /// <param name="reason">The reason headers.</param>
    /// <param name="attempts">The handler attempts spent, for the log.</param>
    /// <param name="cancellationToken">Ends the retries (the partition stopped): the message then stays unsettled.</param>
    /// <returns>A task that completes once the dead-letter topic acknowledged the message.</returns>
    public async Task WriteAsync(TopicPartitionOffset source, Timestamp? timestamp, byte[]? key, byte[]? value, Headers? original, IReadOnlyDictionary<string, string> reason, int attempts, CancellationToken cancellationToken)
    {
        var topic = _options.GetDeadLetterTopic(source.Topic);
        var message = new Message<byte[]?, byte[]?> { Key = key, Value = value, Headers = CreateHeaders(source, timestamp, original, reason) };
        var reasonCode = reason.GetValueOrDefault(DeadLetterHeaders.ReasonCode, "unknown");
        var failures = 0;
        while (true)
        {
            try
            {
                // The source offset may move past this message only once the dead-letter topic acknowledged it.
                await _producer.ProduceAsync(topic, message, cancellationToken).ConfigureAwait(false);
                Log.DeadLettered(_logger, source.TopicPartition.ToString(), source.Offset.Value, topic, reasonCode, attempts);
                return;
            }
            catch (ProduceException<byte[]?, byte[]?> e)
            {
                failures++;
                Log.DeadLetterFailed(_logger, e, topic);
                await Task.Delay(_options.DeadLetterProduceBackoff.GetDelay(failures), _time, cancellationToken).ConfigureAwait(false);
            }
        }
    }
}
