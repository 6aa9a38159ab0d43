using System.Collections.Concurrent;
using System.Globalization;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Outbox;

namespace Idempotency.Sqs.Outbox;

/// <summary>
/// Publishes outbox messages to SQS with <c>SendMessageBatch</c>, ten at a time, in order. Each message carries
/// <see cref="OutboxRecord.MessageId"/> in message attribute <c>IdempotencyKey</c> (the attribute an
/// <see cref="IdempotentSqsWorker"/> reads by default) and the record's headers as string attributes. On a FIFO queue
/// (URL ending in <c>.fifo</c>) <c>MessageGroupId</c> is the record's key (per-key order) and
/// <c>MessageDeduplicationId</c> the message id, so SQS itself drops a republish within its 5-minute window.
/// </summary>
/// <remarks>
/// The destination is a queue URL, or a queue name resolved once with <c>GetQueueUrl</c>. Any failed entry of a batch
/// throws <see cref="SqsOutboxPublishException"/> (the entries before it may have been sent; the relay publishes the whole
/// batch again and the consumer deduplicates). SQS allows 10 message attributes per message: 9 headers at most.
/// </remarks>
public sealed class SqsOutboxPublisher : IOutboxPublisher
{
    /// <summary>SQS's maximum number of entries in one <c>SendMessageBatch</c>.</summary>
    public const int MaxBatchEntries = 10;

    private readonly IAmazonSQS _client;
    private readonly ConcurrentDictionary<string, string> _queueUrls = new(StringComparer.Ordinal);

    /// <summary>Creates a publisher.</summary>
    /// <param name="client">The SQS client; the caller owns it.</param>
    public SqsOutboxPublisher(IAmazonSQS client)
    {
        ArgumentNullException.ThrowIfNull(client);
        _client = client;
    }

    /// <inheritdoc/>
    public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var i = 0;
        while (i < messages.Count)
        {
            // One request per run of up to ten consecutive messages to the same queue, sent one after another: order holds.
            var destination = messages[i].Destination;
            var queueUrl = await ResolveAsync(destination, cancellationToken).ConfigureAwait(false);
            var fifo = queueUrl.EndsWith(".fifo", StringComparison.Ordinal);
            var entries = new List<SendMessageBatchRequestEntry>(MaxBatchEntries);
            while (i < messages.Count && entries.Count < MaxBatchEntries && string.Equals(messages[i].Destination, destination, StringComparison.Ordinal))
            {
                entries.Add(Entry(messages[i], entries.Count, fifo));
                i++;
            }

            var response = await _client.SendMessageBatchAsync(new SendMessageBatchRequest { QueueUrl = queueUrl, Entries = entries }, cancellationToken).ConfigureAwait(false);
            if (response.Failed is { Count: > 0 } failed)
            {
                throw new SqsOutboxPublishException(queueUrl, failed);
            }

            var sent = response.Successful?.Count ?? 0;
            if (sent != entries.Count)
            {
                throw new SqsOutboxPublishException(queueUrl, [new BatchResultErrorEntry { Code = "Missing", Message = $"{sent} of {entries.Count} entries reported successful", SenderFault = false }]);
            }
        }
    }

    private static SendMessageBatchRequestEntry Entry(OutboxRecord record, int index, bool fifo)
    {
        var attributes = new Dictionary<string, MessageAttributeValue>(StringComparer.Ordinal);
        if (record.Headers is not null)
        {
            foreach (var (name, value) in record.Headers)
            {
                attributes[name] = new MessageAttributeValue { DataType = "String", StringValue = value };
            }
        }

        var id = record.MessageId.ToString("D");
        attributes[SqsIdempotencyOptions.DefaultKeyAttributeName] = new MessageAttributeValue { DataType = "String", StringValue = id };
        var entry = new SendMessageBatchRequestEntry
        {
            Id = index.ToString(CultureInfo.InvariantCulture),
            MessageBody = System.Text.Encoding.UTF8.GetString(record.Payload.Span),
            MessageAttributes = attributes,
        };
        if (fifo)
        {
            entry.MessageGroupId = record.Key;
            entry.MessageDeduplicationId = id;
        }

        return entry;
    }

    private async ValueTask<string> ResolveAsync(string destination, CancellationToken cancellationToken)
    {
        if (destination.StartsWith("https://", StringComparison.OrdinalIgnoreCase) || destination.StartsWith("http://", StringComparison.OrdinalIgnoreCase))
        {
            return destination;
        }

        if (_queueUrls.TryGetValue(destination, out var url))
        {
            return url;
        }

        var response = await _client.GetQueueUrlAsync(new GetQueueUrlRequest { QueueName = destination }, cancellationToken).ConfigureAwait(false);
        return _queueUrls.GetOrAdd(destination, response.QueueUrl);
    }
}

/// <summary>Thrown when SQS rejected entries of an outbox batch; nothing is marked sent.</summary>
public sealed class SqsOutboxPublishException : IdempotencyException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="queueUrl">The queue.</param>
    /// <param name="failed">The failed entries.</param>
    public SqsOutboxPublishException(string queueUrl, IReadOnlyList<BatchResultErrorEntry> failed)
        : base($"SQS rejected {failed?.Count} outbox message(s) for {queueUrl}: {string.Join("; ", (failed ?? []).Select(f => $"{f.Code} {f.Message}"))}")
    {
        ArgumentNullException.ThrowIfNull(failed);
        Failed = failed;
    }

    /// <summary>Gets the failed entries.</summary>
    public IReadOnlyList<BatchResultErrorEntry> Failed { get; }

    /// <inheritdoc/>
    public override bool IsTransient => Failed.All(f => f.SenderFault != true);
}
