using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Idempotency.Delivery;
using Idempotency.Diagnostics;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>One delivery as the engine sees it: the message (body copied), its RabbitMQ details and the id its attempts are counted under.</summary>
/// <param name="Message">The message with its key, headers and 1-based handler attempt.</param>
/// <param name="Native">The RabbitMQ details (delivery tag, exchange, routing key, properties).</param>
/// <param name="AttemptId">The key, or a hash of the body when there is no key.</param>
internal sealed record RabbitMqWork(IncomingMessage Message, RabbitMqDelivery Native, string AttemptId)
{
    /// <summary>Gets the channel-scoped delivery tag.</summary>
    public ulong DeliveryTag => Native.DeliveryTag;
}

/// <summary>
/// Maps a <see cref="BasicDeliverEventArgs"/> to an <see cref="IncomingMessage"/> for the consumer and the step alike: the key
/// from the default place (the message id, or <see cref="RabbitMqIdempotencyOptions.KeyHeader"/> decoded exactly, or the
/// <see cref="RabbitMqIdempotencyOptions.KeySelector"/>), and the handler attempt from the quorum queue's
/// <c>x-delivery-count</c> or, on classic queues, from the attempts remembered in this process.
/// </summary>
/// <remarks>
/// Reading never throws on what a publisher put in a message (a delivery callback that throws leaves the delivery unacked
/// and holds a prefetch slot for good): a malformed <c>x-delivery-count</c> or timestamp is ignored, and a
/// <see cref="RabbitMqIdempotencyOptions.KeySelector"/> that throws makes the key invalid, so the message is dead-lettered
/// with reason <c>invalid_key</c>.
/// </remarks>
internal sealed class RabbitMqMessageReader(RabbitMqIdempotencyOptions options, string handlerName, ILogger logger)
{
    private const string DeliveryCountHeader = "x-delivery-count";
    private int _warnedDeliveryCount;

    /// <summary>Reads one delivery; call it inside the delivery callback, where the body is valid (it is copied).</summary>
    /// <param name="args">The delivery.</param>
    /// <param name="attempts">The attempts remembered per message.</param>
    /// <returns>The work item.</returns>
    public RabbitMqWork Read(BasicDeliverEventArgs args, AttemptLedger attempts)
    {
        var body = args.Body.ToArray();
        var properties = args.BasicProperties;
        var key = SelectKey(args, out var keyError);
        var headers = properties.Headers;

        // Quorum queues set x-delivery-count on redeliveries (and then set the redelivered flag too). On a first delivery
        // the header can only be the publisher's, which must not cost the message its attempts.
        var deliveryCount = args.Redelivered ? ReadDeliveryCount(headers) : null;

        var attemptId = AttemptIdOf(key, body);
        var attempt = 1;
        if (args.Redelivered)
        {
            IdempotencyMetrics.RecordRedelivered("rabbitmq", handlerName, options.Queue);

            // Requeues that were not the handler's fault (store outages, held keys, stops) are not attempts.
            var (failures, requeues) = attempts.Get(attemptId);
            attempt = deliveryCount is { } c ? (int)Math.Clamp(c + 1L - requeues, 1L, int.MaxValue) : failures + 1;
        }

        var native = new RabbitMqDelivery(args.DeliveryTag, args.Redelivered, args.Exchange, args.RoutingKey, args.ConsumerTag, properties, body);
        var message = new IncomingMessage(key, body)
        {
            KeyError = keyError,
            Broker = "rabbitmq",
            Destination = options.Queue,
            Headers = headers is { Count: > 0 } ? ToTextHeaders(headers) : null,
            Timestamp = ReadTimestamp(properties),
            Redelivered = args.Redelivered,
            RedeliveryCause = args.Redelivered ? "redelivery" : null,
            DeliveryAttempt = attempt,
            Native = native,
        };
        return new RabbitMqWork(message, native, attemptId);
    }

    /// <summary>Returns the id a message's attempts are counted under: its key, or a hash of its body when it has none.</summary>
    /// <param name="key">The key, if any.</param>
    /// <param name="body">The body.</param>
    /// <returns>The attempt id.</returns>
    public static string AttemptIdOf(string? key, ReadOnlySpan<byte> body) =>
        key is { Length: > 0 } ? key : "sha256:" + Convert.ToHexString(SHA256.HashData(body));

    private string? SelectKey(BasicDeliverEventArgs args, out string? keyError)
    {
        keyError = null;
        if (options.KeySelector is { } selector)
        {
            try
            {
                return selector(args);
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // The user's code failed on this message: it has no key, and is dead-lettered as such with the cause.
                keyError = $"{nameof(RabbitMqIdempotencyOptions.KeySelector)} threw {exception.GetType().FullName}: {exception.Message}";
                return null;
            }
        }

        if (options.KeyHeader is not { } header)
        {
            return args.BasicProperties.MessageId;
        }

        if (args.BasicProperties.Headers is not { } headers || !headers.TryGetValue(header, out var value))
        {
            return null;
        }

        // Bytes are decoded exactly (or refused): a lossy decode would make two different keys one.
        return value is byte[] bytes
            ? IdempotencyKey.TryDecode(bytes, options.KeyBytesEncoding, out var key, out keyError) ? key : null
            : HeaderText(value);
    }

    /// <summary>Reads <c>x-delivery-count</c> when it is a non-negative integer; anything else is not trusted (warned about once).</summary>
    private int? ReadDeliveryCount(IDictionary<string, object?>? headers)
    {
        if (headers is null || !headers.TryGetValue(DeliveryCountHeader, out var value) || value is null)
        {
            return null;
        }

        long? count = value switch
        {
            long l => l,
            int i => i,
            short s => s,
            byte b => b,
            sbyte sb => sb,
            ushort us => us,
            uint ui => ui,
            ulong ul when ul <= int.MaxValue => (long)ul,
            _ => null,
        };
        if (count is >= 0 and <= int.MaxValue)
        {
            return (int)count.Value;
        }

        if (Interlocked.Exchange(ref _warnedDeliveryCount, 1) == 0)
        {
            Log.DeliveryCountIgnored(logger, options.Queue, value.GetType().Name);
        }

        return null;
    }

    /// <summary>Reads the timestamp; one outside what <see cref="DateTimeOffset"/> can hold is ignored.</summary>
    private static DateTimeOffset? ReadTimestamp(IReadOnlyBasicProperties properties)
    {
        const long maxUnixSeconds = 253_402_300_799; // 9999-12-31T23:59:59Z, the largest DateTimeOffset
        return properties.IsTimestampPresent() && properties.Timestamp.UnixTime is >= 0 and <= maxUnixSeconds
            ? DateTimeOffset.FromUnixTimeSeconds(properties.Timestamp.UnixTime)
            : null;
    }

    private static Dictionary<string, string> ToTextHeaders(IDictionary<string, object?> headers)
    {
        var text = new Dictionary<string, string>(headers.Count, StringComparer.Ordinal);
        foreach (var (name, value) in headers)
        {
            if (HeaderText(value) is { } s)
            {
                text[name] = s;
            }
        }

        return text;
    }

    private static string? HeaderText(object? value) => value switch
    {
        null => null,
        byte[] bytes => Encoding.UTF8.GetString(bytes),
        string s => s,
        IFormattable formattable => formattable.ToString(null, CultureInfo.InvariantCulture),
        _ => null,
    };
}
