using System.Globalization;
using Amazon.SQS;
using Amazon.SQS.Model;
using Microsoft.Extensions.Logging;

namespace Idempotency.Sqs;

/// <summary>
/// The worker's calls that settle messages on the queue, in as few requests as SQS allows (batches of 10): delete,
/// change visibility, send a dead-letter copy. Failures are logged and counted, never thrown: a message that was not
/// deleted comes back and is a duplicate; one whose visibility did not change comes back when it ends.
/// </summary>
internal sealed class SqsQueueCalls(IAmazonSQS sqs, SqsIdempotencyOptions options, SqsWorkerStatistics statistics, ILogger logger)
{
    private const int MaxBatchEntries = 10;

    /// <summary>Deletes messages whose effects committed; not cancellable, so that committed work is deleted even while stopping.</summary>
    public async Task DeleteAsync(IReadOnlyList<Message> messages)
    {
        for (var start = 0; start < messages.Count; start += MaxBatchEntries)
        {
            var count = Math.Min(MaxBatchEntries, messages.Count - start);
            var entries = new List<DeleteMessageBatchRequestEntry>(count);
            for (var i = 0; i < count; i++)
            {
                entries.Add(new DeleteMessageBatchRequestEntry { Id = i.ToString(CultureInfo.InvariantCulture), ReceiptHandle = messages[start + i].ReceiptHandle });
            }

            try
            {
                var response = await sqs.DeleteMessageBatchAsync(new DeleteMessageBatchRequest { QueueUrl = options.QueueUrl, Entries = entries }, CancellationToken.None).ConfigureAwait(false);
                var failed = response.Failed ?? [];
                foreach (var entry in failed)
                {
                    var message = messages[start + int.Parse(entry.Id, CultureInfo.InvariantCulture)];
                    Log.DeleteFailed(logger, message.MessageId, options.QueueUrl, entry.Code ?? "unknown", entry.Message ?? string.Empty);
                }

                statistics.AddDeleted(count - failed.Count);
                statistics.AddDeleteFailures(failed.Count);
            }
#pragma warning disable CA1031 // A failed delete is logged and counted; the messages come back and are duplicates.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                statistics.AddDeleteFailures(count);
                Log.DeleteBatchFailed(logger, exception, count, options.QueueUrl);
            }
        }
    }

    /// <summary>Changes the visibility of messages; returns how many changes failed.</summary>
    public async Task<int> ChangeVisibilityAsync(IReadOnlyList<(Message Message, int Seconds)> changes, CancellationToken cancellationToken)
    {
        var failures = 0;
        for (var start = 0; start < changes.Count; start += MaxBatchEntries)
        {
            var count = Math.Min(MaxBatchEntries, changes.Count - start);
            var entries = new List<ChangeMessageVisibilityBatchRequestEntry>(count);
            for (var i = 0; i < count; i++)
            {
                var (message, seconds) = changes[start + i];
                entries.Add(new ChangeMessageVisibilityBatchRequestEntry
                {
                    Id = i.ToString(CultureInfo.InvariantCulture),
                    ReceiptHandle = message.ReceiptHandle,
                    VisibilityTimeout = seconds,
                });
            }

            try
            {
                var response = await sqs.ChangeMessageVisibilityBatchAsync(
                    new ChangeMessageVisibilityBatchRequest { QueueUrl = options.QueueUrl, Entries = entries }, cancellationToken).ConfigureAwait(false);
                foreach (var failed in response.Failed ?? [])
                {
                    failures++;
                    var message = changes[start + int.Parse(failed.Id, CultureInfo.InvariantCulture)].Message;
                    Log.VisibilityEntryFailed(logger, message.MessageId, options.QueueUrl, failed.Code ?? "unknown", failed.Message ?? string.Empty);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                throw;
            }
#pragma warning disable CA1031 // A failed change is logged and counted; the message comes back when its visibility ends.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                failures += count;
                Log.VisibilityChangeFailed(logger, exception, count, options.QueueUrl);
            }
        }

        return failures;
    }

    /// <summary>Sends the dead-letter copy; <see langword="false"/> when it could not be sent (the message stays and is tried again).</summary>
    public async Task<bool> SendToDeadLetterAsync(Message message, SendMessageRequest copy, string reasonCode)
    {
        try
        {
            // Not cancellable: a copy half-sent while stopping would be sent again on the redelivery anyway.
            await sqs.SendMessageAsync(copy, CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // The message stays in the source queue and is tried again later.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            statistics.AddDeadLetterFailure();
            Log.DeadLetterFailed(logger, exception, message.MessageId, copy.QueueUrl, options.QueueUrl);
            return false;
        }

        statistics.AddDeadLettered();
        Log.DeadLettered(logger, message.MessageId, options.QueueUrl, copy.QueueUrl, reasonCode);
        return true;
    }
}
