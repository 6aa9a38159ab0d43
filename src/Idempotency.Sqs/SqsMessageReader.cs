using System.Globalization;
using System.Text;
using Amazon.SQS.Model;
using Idempotency.Delivery;
using Idempotency.Diagnostics;
using Microsoft.Extensions.Logging;

namespace Idempotency.Sqs;

/// <summary>
/// Reads an SQS <see cref="Message"/> for the pipeline: its key (from the places the options name, in order), its body
/// and metadata, and writes the attributes of its dead-letter copy. Shared by the worker and <see cref="SqsIdempotentStep"/>,
/// so a loop the user keeps reads a message exactly as the worker does.
/// </summary>
internal sealed class SqsMessageReader
{
    /// <summary>The system attributes the worker asks for on every receive.</summary>
    internal static readonly string[] SystemAttributeNames = ["ApproximateReceiveCount", "MessageGroupId", "MessageDeduplicationId", "SentTimestamp"];

    private readonly SqsIdempotencyOptions _options;
    private readonly string _handlerName;
    private readonly ILogger _logger;

    public SqsMessageReader(SqsIdempotencyOptions options, string handlerName, ILogger logger)
    {
        _options = options;
        _handlerName = handlerName;
        _logger = logger;
        QueueName = ToQueueName(options.QueueUrl);
    }

    /// <summary>Gets the queue's name (the last segment of its URL) for telemetry.</summary>
    public string QueueName { get; }

    public IncomingMessage ToIncoming(Message message)
    {
        var attempt = ReceiveCount(message);
        Dictionary<string, string>? headers = null;
        if (message.MessageAttributes is { Count: > 0 } attributes)
        {
            headers = new Dictionary<string, string>(attributes.Count, StringComparer.Ordinal);
            foreach (var (name, value) in attributes)
            {
                if (value.StringValue is { } text)
                {
                    headers[name] = text;
                }
            }
        }

        DateTimeOffset? sent = null;
        if (message.Attributes?.TryGetValue("SentTimestamp", out var sentText) == true &&
            long.TryParse(sentText, NumberStyles.Integer, CultureInfo.InvariantCulture, out var sentMs))
        {
            sent = DateTimeOffset.FromUnixTimeMilliseconds(sentMs);
        }

        if (attempt > 1)
        {
            IdempotencyMetrics.RecordRedelivered(IdempotentSqsWorker.BrokerName, _handlerName, QueueName);
        }

        return new IncomingMessage(SelectKey(message, out var keyError), Encoding.UTF8.GetBytes(message.Body ?? string.Empty))
        {
            Broker = IdempotentSqsWorker.BrokerName,
            Destination = QueueName,
            Headers = headers,
            Timestamp = sent,
            Redelivered = attempt > 1,
            RedeliveryCause = attempt > 1 ? "redelivery" : null,
            DeliveryAttempt = attempt,
            KeyError = keyError,
            Native = message,
        };
    }

    /// <summary>
    /// The key: the key attribute (a binary one decoded with <see cref="IdempotentConsumerOptions.KeyBytesEncoding"/>),
    /// else the FIFO deduplication id, else the selector, else (opt-in) the message id.
    /// </summary>
    public string? SelectKey(Message message, out string? keyError)
    {
        keyError = null;
        if (_options.KeyAttributeName is { } name && message.MessageAttributes?.TryGetValue(name, out var attribute) == true)
        {
            if (attribute.StringValue is { Length: > 0 } fromAttribute)
            {
                return fromAttribute;
            }

            if (attribute.BinaryValue is { Length: > 0 } bytes)
            {
                return IdempotencyKey.TryDecode(bytes.ToArray(), _options.KeyBytesEncoding, out var decoded, out keyError) ? decoded : null;
            }
        }

        if (_options.IsFifoQueue && _options.UseDeduplicationIdOnFifo && message.Attributes?.TryGetValue("MessageDeduplicationId", out var dedup) == true && dedup is { Length: > 0 })
        {
            return dedup;
        }

        if (_options.KeySelector is { } selector)
        {
            try
            {
                if (selector(message) is { Length: > 0 } selected)
                {
                    return selected;
                }
            }
#pragma warning disable CA1031 // A throwing selector means "no key", which the missing-key policy handles.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                Log.KeySelectorFailed(_logger, exception, message.MessageId, _options.QueueUrl);
            }
        }

        return _options.UseMessageIdAsKey ? message.MessageId : null;
    }

    /// <summary>The attributes of a dead-letter copy: the key attribute, the reason, then as many original attributes as SQS allows.</summary>
    public Dictionary<string, MessageAttributeValue> DeadLetterAttributes(Message message, IReadOnlyDictionary<string, string> reason)
    {
        var attributes = new Dictionary<string, MessageAttributeValue>(StringComparer.Ordinal);
        var original = message.MessageAttributes ?? [];

        // The key attribute first, so a message moved back to the source queue after a fix keeps its key.
        if (_options.KeyAttributeName is { } keyName && original.TryGetValue(keyName, out var keyValue))
        {
            attributes[keyName] = keyValue;
        }

        var common = new Dictionary<string, string>(reason, StringComparer.Ordinal)
        {
            [SqsDeadLetterAttributes.SourceQueue] = _options.QueueUrl,
            [SqsDeadLetterAttributes.MessageId] = message.MessageId,
        };
        string[] order =
        [
            DeadLetterHeaders.ReasonCode, DeadLetterHeaders.ErrorType, DeadLetterHeaders.ErrorMessage, DeadLetterHeaders.Attempts,
            DeadLetterHeaders.Handler, SqsDeadLetterAttributes.SourceQueue, SqsDeadLetterAttributes.MessageId, DeadLetterHeaders.Key,
            DeadLetterHeaders.PayloadFingerprint, DeadLetterHeaders.StoredFingerprint,
        ];
        foreach (var name in order)
        {
            if (attributes.Count < SqsDeadLetterAttributes.MaxAttributes && common.TryGetValue(name, out var value) && value.Length > 0)
            {
                attributes[name] = new MessageAttributeValue { DataType = "String", StringValue = value };
            }
        }

        foreach (var (name, value) in original)
        {
            if (attributes.Count >= SqsDeadLetterAttributes.MaxAttributes)
            {
                break;
            }

            attributes.TryAdd(name, value);
        }

        return attributes;
    }

    /// <summary>A dead-letter copy of <paramref name="message"/> for <paramref name="deadLetterQueueUrl"/> (FIFO: same group, its message id as deduplication id).</summary>
    public SendMessageRequest DeadLetterRequest(Message message, string deadLetterQueueUrl, IReadOnlyDictionary<string, string> reason)
    {
        var request = new SendMessageRequest
        {
            QueueUrl = deadLetterQueueUrl,
            MessageBody = message.Body,
            MessageAttributes = DeadLetterAttributes(message, reason),
        };
        if (deadLetterQueueUrl.EndsWith(".fifo", StringComparison.Ordinal))
        {
            request.MessageGroupId = GroupId(message) ?? "dead-letter";
            request.MessageDeduplicationId = message.MessageId;
        }

        return request;
    }

    public static int ReceiveCount(Message message) =>
        message.Attributes?.TryGetValue("ApproximateReceiveCount", out var text) == true &&
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var count) && count > 0 ? count : 1;

    public static string? GroupId(Message message) =>
        message.Attributes?.TryGetValue("MessageGroupId", out var group) == true ? group : null;

    /// <summary>A delay as whole seconds of visibility timeout, within what SQS accepts.</summary>
    public static int ToSeconds(TimeSpan delay) =>
        (int)Math.Clamp(Math.Ceiling(delay.TotalSeconds), 0, SqsIdempotencyOptions.MaxVisibilityTimeout.TotalSeconds);

    private static string ToQueueName(string queueUrl)
    {
        var trimmed = queueUrl.TrimEnd('/');
        var slash = trimmed.LastIndexOf('/');
        return slash >= 0 ? trimmed[(slash + 1)..] : trimmed;
    }
}
