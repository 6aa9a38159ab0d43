using System.Text;
using Confluent.Kafka;
using Idempotency.Outbox;

namespace Idempotency.Kafka.Outbox;

/// <summary>
/// Publishes outbox messages to Kafka with an idempotent producer (<c>enable.idempotence=true</c>, <c>acks=all</c>):
/// the record's <see cref="OutboxRecord.Destination"/> is the topic, its <see cref="OutboxRecord.Key"/> the message key
/// (so one key stays on one partition, in order), and its <see cref="OutboxRecord.MessageId"/> travels in header
/// <c>idempotency-key</c>, the header an <see cref="IdempotentKafkaConsumer{TKey, TValue}"/> reads by default.
/// <see cref="PublishAsync"/> returns only when every delivery report came back successful.
/// </summary>
/// <remarks>
/// Thread-safe; one instance per relay is enough. Disposing it flushes (bounded) and disposes the producer it built;
/// a producer passed in is left to its owner.
/// </remarks>
public sealed class KafkaOutboxPublisher : IOutboxPublisher, IDisposable
{
    private readonly IProducer<byte[], byte[]> _producer;
    private readonly bool _ownsProducer;

    /// <summary>Creates a publisher with its own idempotent producer.</summary>
    /// <param name="config">
    /// Bootstrap servers, security and tuning. <c>EnableIdempotence</c> is forced to true and <c>Acks</c> to all;
    /// <c>MessageTimeoutMs</c> defaults to 30 s when not set, so a broker outage fails the batch (the relay backs off
    /// and retries) instead of holding the relay's row locks for librdkafka's default 5 minutes.
    /// </param>
    public KafkaOutboxPublisher(ProducerConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        var copy = new ProducerConfig(config.ToDictionary(kv => kv.Key, kv => kv.Value))
        {
            EnableIdempotence = true,
            Acks = Acks.All,
        };
        copy.MessageTimeoutMs ??= 30_000;
        copy.LingerMs ??= 1;
        _producer = new ProducerBuilder<byte[], byte[]>(copy).Build();
        _ownsProducer = true;
    }

    /// <summary>Creates a publisher over a producer the caller owns; it should be idempotent with acks=all.</summary>
    /// <param name="producer">The producer.</param>
    public KafkaOutboxPublisher(IProducer<byte[], byte[]> producer)
    {
        ArgumentNullException.ThrowIfNull(producer);
        _producer = producer;
        _ownsProducer = false;
    }

    /// <inheritdoc/>
    /// <exception cref="KafkaOutboxPublishException">At least one message was not acknowledged; some others may have been (the relay publishes the batch again).</exception>
    public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            return;
        }

        var batch = new PendingBatch(messages.Count);
        for (var i = 0; i < messages.Count; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var record = messages[i];
            var message = new Message<byte[], byte[]>
            {
                Key = Encoding.UTF8.GetBytes(record.Key),
                Value = ByteArrays.AsArray(record.Payload),
                Headers = BuildHeaders(record),
            };

            while (true)
            {
                try
                {
                    _producer.Produce(record.Destination, message, batch.OnReport);
                    break;
                }
                catch (ProduceException<byte[], byte[]> exception) when (exception.Error.Code == ErrorCode.Local_QueueFull)
                {
                    // The local queue is full: let delivery reports drain it, then go on (in order).
                    await Task.Delay(5, cancellationToken).ConfigureAwait(false);
                }
                catch (ProduceException<byte[], byte[]> exception)
                {
                    // Produced so far stays produced; the relay publishes the whole batch again later.
                    batch.FailRemaining(messages.Count - i, exception.Error);
                    break;
                }
            }

            if (batch.IsFailed)
            {
                break;
            }
        }

        await batch.Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_ownsProducer)
        {
            _producer.Flush(TimeSpan.FromSeconds(5));
            _producer.Dispose();
        }
    }

    private static Headers BuildHeaders(OutboxRecord record)
    {
        var headers = new Headers();
        if (record.Headers is not null)
        {
            foreach (var (name, value) in record.Headers)
            {
                if (!string.Equals(name, OutboxRecord.IdempotencyKeyHeader, StringComparison.Ordinal))
                {
                    headers.Add(name, Encoding.UTF8.GetBytes(value));
                }
            }
        }

        headers.Add(OutboxRecord.IdempotencyKeyHeader, Encoding.UTF8.GetBytes(record.MessageId.ToString("D")));
        return headers;
    }

    private sealed class PendingBatch(int count)
    {
        private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _left = count;
        private Error? _firstError;

        public Task Completion => _completion.Task;

        public bool IsFailed => Volatile.Read(ref _firstError) is not null;

        public void OnReport(DeliveryReport<byte[], byte[]> report)
        {
            if (report.Error.IsError)
            {
                Interlocked.CompareExchange(ref _firstError, report.Error, null);
            }

            Done(1);
        }

        public void FailRemaining(int remaining, Error error)
        {
            Interlocked.CompareExchange(ref _firstError, error, null);
            Done(remaining);
        }

        private void Done(int n)
        {
            if (Interlocked.Add(ref _left, -n) != 0)
            {
                return;
            }

            var error = Volatile.Read(ref _firstError);
            if (error is null)
            {
                _completion.TrySetResult();
            }
            else
            {
                _completion.TrySetException(new KafkaOutboxPublishException(error));
            }
        }
    }
}

/// <summary>Thrown when Kafka did not acknowledge every message of an outbox batch; nothing is marked sent.</summary>
public sealed class KafkaOutboxPublishException : IdempotencyException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="error">The first delivery error.</param>
    public KafkaOutboxPublishException(Error error)
        : base($"Kafka did not acknowledge every outbox message: {error?.Code} {error?.Reason}")
    {
        ArgumentNullException.ThrowIfNull(error);
        Error = error;
    }

    /// <summary>Gets the first delivery error.</summary>
    public Error Error { get; }

    /// <inheritdoc/>
    public override bool IsTransient => !Error.IsFatal;
}
