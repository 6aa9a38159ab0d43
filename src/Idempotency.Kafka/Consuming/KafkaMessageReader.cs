using System.Text;
using Confluent.Kafka;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// Maps a Kafka record to the pipeline's <see cref="IncomingMessage"/>: the key from the key selector or the key header
/// (exact bytes, decoded by <see cref="IdempotentConsumerOptions.KeyBytesEncoding"/>), the body from the body selector or
/// the raw value, the trace headers and, with offsets kept in the store, the message's position.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
internal sealed class KafkaMessageReader<TKey, TValue>
{
    private readonly KafkaIdempotencyOptions _options;
    private readonly Func<ConsumeResult<TKey, TValue>, string?>? _keySelector;
    private readonly Func<ConsumeResult<TKey, TValue>, ReadOnlyMemory<byte>>? _bodySelector;
    private readonly string? _positionGroup;
    private readonly ILogger _logger;

    /// <summary>Creates the reader.</summary>
    /// <param name="options">The options (key header, encoding, selectors when typed).</param>
    /// <param name="positionGroup">The group whose positions go to the store; null when they do not.</param>
    /// <param name="logger">Logs key selectors that throw.</param>
    public KafkaMessageReader(KafkaIdempotencyOptions options, string? positionGroup, ILogger logger)
    {
        var typed = options as KafkaIdempotencyOptions<TKey, TValue>;
        _options = options;
        _keySelector = typed?.KeySelector;
        _bodySelector = typed?.BodySelector;
        _positionGroup = positionGroup;
        _logger = logger;
    }

    /// <summary>Gets a value indicating whether values of <typeparamref name="TValue"/> are fingerprinted without a body selector.</summary>
    public static bool IsRawValueType => typeof(TValue) == typeof(byte[]) || typeof(TValue) == typeof(string) || typeof(TValue) == typeof(Ignore) || typeof(TValue) == typeof(Null);

    /// <summary>Returns the options' errors for records of these types: its own, and a value type that needs a body selector the options cannot hold.</summary>
    /// <param name="options">The options.</param>
    /// <returns>One message per problem; empty when usable.</returns>
    public static List<string> ValidationErrors(KafkaIdempotencyOptions options)
    {
        var errors = new List<string>(options.GetValidationErrors());
        if (options is not KafkaIdempotencyOptions<TKey, TValue> && !IsRawValueType)
        {
            errors.Add($"BodySelector is required when the value type is {typeof(TValue).Name}: use KafkaIdempotencyOptions<{typeof(TKey).Name}, {typeof(TValue).Name}>.");
        }

        return errors;
    }

    /// <summary>
    /// Reads a record's body once: a body selector that throws (a malformed payload) makes the message unreadable, to
    /// be dead-lettered like one the consumer could not deserialize, instead of failing the partition's worker.
    /// </summary>
    /// <param name="record">The record.</param>
    /// <returns>The delivery with its body, or an unreadable one carrying the selector's exception.</returns>
    public KafkaDelivery<TKey, TValue> Read(ConsumeResult<TKey, TValue> record)
    {
        try
        {
            return KafkaDelivery<TKey, TValue>.Of(record, SelectBody(record));
        }
#pragma warning disable CA1031 // Any exception of the user's selector means the same: this payload cannot be read.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Log.BodySelectorFailed(_logger, e, record.TopicPartition.ToString(), record.Offset.Value);
            return KafkaDelivery<TKey, TValue>.Unselectable(record, e);
        }
    }

    /// <summary>Builds the pipeline's message for a record.</summary>
    /// <param name="record">The record.</param>
    /// <param name="body">Its body, from <see cref="Read"/>.</param>
    /// <param name="attempt">The 1-based handler attempt this processing is.</param>
    /// <param name="reread">Whether this process saw the offset before (a rebalance handed it out again).</param>
    /// <param name="withPosition">Whether the message may carry its position to the store (only when every earlier message settled).</param>
    /// <param name="keyLookedUp">Whether its key was already looked up without being found.</param>
    /// <returns>The message.</returns>
    public IncomingMessage ToIncoming(ConsumeResult<TKey, TValue> record, ReadOnlyMemory<byte> body, int attempt, bool reread = false, bool withPosition = true, bool keyLookedUp = false) =>
        new(SelectKey(record, out var keyError), body)
        {
            KeyError = keyError,
            Broker = "kafka",
            Destination = record.Topic,
            Headers = TraceHeaders(record.Message.Headers),
            Timestamp = record.Message.Timestamp.Type == TimestampType.NotAvailable ? null : new DateTimeOffset(record.Message.Timestamp.UtcDateTime),
            Redelivered = reread || attempt > 1,
            RedeliveryCause = reread ? "rebalance" : attempt > 1 ? "redelivery" : null,
            DeliveryAttempt = attempt,
            KeyLookedUp = keyLookedUp,
            Native = record,
            Position = _positionGroup is null || !withPosition ? null : new ConsumerPosition(_positionGroup, record.Topic, record.Partition.Value, record.Offset.Value),
        };

    /// <summary>
    /// The result of a message that cannot be read (the consumer could not deserialize it, or the body selector threw):
    /// it never reaches the handler, and the engine dead-letters it at once
    /// (<see cref="MessageDeserializationException.ReasonCode"/>), as it does a typed handler's body that does not deserialize.
    /// </summary>
    /// <param name="delivery">The unreadable delivery.</param>
    /// <returns>A <see cref="ProcessingOutcome.Failed"/> result carrying a <see cref="MessageDeserializationException"/>.</returns>
    public ProcessingResult Unreadable(KafkaDelivery<TKey, TValue> delivery)
    {
        if (delivery.Raw is not { } raw)
        {
            // Deserialized, but the body selector threw: the key as usual, the value's own bytes when it has them.
            var record = delivery.Result!;
            var key = SelectKey(record, out _);
            var selected = new IncomingMessage(key, RawBody(record))
            {
                Broker = "kafka",
                Destination = record.Topic,
                Native = record,
            };
            return new ProcessingResult(selected, ProcessingOutcome.Failed) { Exception = new MessageDeserializationException(typeof(TValue), key, delivery.Error) };
        }

        return Unreadable(raw, delivery.Error!);
    }

    private ProcessingResult Unreadable(ConsumeResult<byte[], byte[]> raw, Exception error)
    {
        string? key = null;
        if (raw.Message.Headers is { } headers && headers.TryGetLastBytes(_options.KeyHeader, out var bytes) && bytes is not null)
        {
            IdempotencyKey.TryDecode(bytes, _options.KeyBytesEncoding, out key, out _);
        }

        var message = new IncomingMessage(key, raw.Message.Value ?? ReadOnlyMemory<byte>.Empty)
        {
            Broker = "kafka",
            Destination = raw.Topic,
            Native = raw,
        };
        return new ProcessingResult(message, ProcessingOutcome.Failed) { Exception = new MessageDeserializationException(typeof(TValue), key, error) };
    }

    /// <summary>Returns a record key's bytes for the dead-letter topic (byte arrays as they are, strings as UTF-8, others none).</summary>
    /// <param name="key">The key.</param>
    /// <returns>The bytes, or null.</returns>
    public static byte[]? KeyBytes(TKey key) => key switch
    {
        byte[] bytes => bytes,
        string text => Encoding.UTF8.GetBytes(text),
        _ => null,
    };

    private string? SelectKey(ConsumeResult<TKey, TValue> record, out string? keyError)
    {
        keyError = null;
        if (_keySelector is null)
        {
            if (record.Message.Headers is not { } headers || !headers.TryGetLastBytes(_options.KeyHeader, out var bytes) || bytes is null)
            {
                return null;
            }

            return IdempotencyKey.TryDecode(bytes, _options.KeyBytesEncoding, out var key, out keyError) ? key : null;
        }

        try
        {
            return _keySelector(record);
        }
#pragma warning disable CA1031 // A selector that throws is a message without a key; its policy decides.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Log.KeySelectorFailed(_logger, e, record.TopicPartition.ToString(), record.Offset.Value);
            return null;
        }
    }

    private ReadOnlyMemory<byte> SelectBody(ConsumeResult<TKey, TValue> record) =>
        _bodySelector is not null ? _bodySelector(record) : RawBody(record);

    private static ReadOnlyMemory<byte> RawBody(ConsumeResult<TKey, TValue> record) =>
        record.Message.Value switch
        {
            byte[] bytes => bytes,
            string text => Encoding.UTF8.GetBytes(text),
            _ => ReadOnlyMemory<byte>.Empty,
        };

    private static Dictionary<string, string>? TraceHeaders(Headers? headers)
    {
        if (headers is null || headers.Count == 0 || !headers.TryGetLastBytes("traceparent", out var parent))
        {
            return null;
        }

        var result = new Dictionary<string, string>(StringComparer.Ordinal) { ["traceparent"] = Encoding.UTF8.GetString(parent) };
        if (headers.TryGetLastBytes("tracestate", out var state))
        {
            result["tracestate"] = Encoding.UTF8.GetString(state);
        }

        return result;
    }
}
