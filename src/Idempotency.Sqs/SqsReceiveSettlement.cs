using Amazon.SQS.Model;
using Idempotency.Delivery;
using Microsoft.Extensions.Logging;

namespace Idempotency.Sqs;

/// <summary>
/// SQS's ack model for the <see cref="DeliveryEngine"/>, over one receive: settle = delete, return = change visibility,
/// dead-letter = send the copy to the dead-letter queue, then delete. The engine decides each message's fate (attempts
/// per message id, the store gate, dead-letters); this port collects the deletes and visibility changes and sends them
/// in as few calls as SQS allows. On a FIFO queue a message held back holds back the rest of its group.
/// </summary>
internal sealed class SqsReceiveSettlement : IDeliveryPort<Message>
{
    private readonly DeliveryEngine _engine;
    private readonly SqsQueueCalls _calls;
    private readonly SqsMessageReader _reader;
    private readonly SqsIdempotencyOptions _options;
    private readonly SqsWorkerStatistics _statistics;
    private readonly ILogger _logger;
    private readonly Dictionary<string, int>? _heldGroups;
    private readonly List<Message> _deletes = [];
    private readonly List<(Message Message, int Seconds)> _changes = [];

    public SqsReceiveSettlement(DeliveryEngine engine, SqsQueueCalls calls, SqsMessageReader reader, SqsIdempotencyOptions options, SqsWorkerStatistics statistics, ILogger logger)
    {
        _engine = engine;
        _calls = calls;
        _reader = reader;
        _options = options;
        _statistics = statistics;
        _logger = logger;
        _heldGroups = options.IsFifoQueue ? new(StringComparer.Ordinal) : null;
    }

    public bool RetriesInPlace => false;

    public string Broker => IdempotentSqsWorker.BrokerName;

    public string Destination => _reader.QueueName;

    /// <summary>
    /// Settles a processed receive. The results whose store work failed are decided first, before this returns: that
    /// closes the engine's store gate, so the poller does not receive again while the rest settles in the background.
    /// </summary>
    /// <returns>The task that settles the rest (deletes, dead-letters, visibility changes).</returns>
    public async Task<Task> SettleAsync(IReadOnlyList<Message> messages, IReadOnlyList<ProcessingResult?> results)
    {
        var storeFailed = new bool[messages.Count];
        for (var i = 0; i < messages.Count; i++)
        {
            if (results[i] is { Outcome: ProcessingOutcome.StoreUnavailable or ProcessingOutcome.StoreMisconfigured } result)
            {
                storeFailed[i] = true;
                await _engine.SettleAsync(this, messages[i], result, cancellationToken: CancellationToken.None).ConfigureAwait(false);
            }
        }

        return SettleRestAsync(messages, results, storeFailed);
    }

    private async Task SettleRestAsync(IReadOnlyList<Message> messages, IReadOnlyList<ProcessingResult?> results, bool[] settled)
    {
        for (var i = 0; i < messages.Count; i++)
        {
            if (settled[i])
            {
                continue;
            }

            if (results[i] is { } result)
            {
                await _engine.SettleAsync(this, messages[i], result, cancellationToken: CancellationToken.None).ConfigureAwait(false);
            }
            else
            {
                // Not processed (shutdown, a crash, or held behind a failed message of its FIFO group).
                Release(messages[i]);
            }
        }

        await _calls.DeleteAsync(_deletes).ConfigureAwait(false);
        if (_changes.Count > 0)
        {
            await _calls.ChangeVisibilityAsync(_changes, CancellationToken.None).ConfigureAwait(false);
        }
    }

    public string AttemptId(Message delivery) => delivery.MessageId;

    public ValueTask AcknowledgeAsync(Message delivery, ProcessingResult result, CancellationToken cancellationToken)
    {
        _deletes.Add(delivery);
        return ValueTask.CompletedTask;
    }

    public async ValueTask<bool> DeadLetterAsync(Message delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
    {
        if (_options.DeadLetterQueueUrl is not { } deadLetterQueue)
        {
            // Dead-lettering left to the queue's RedrivePolicy: visible again at once, so SQS counts the receive.
            Log.LeftToRedrive(_logger, delivery.MessageId, _options.QueueUrl, decision.ReasonCode ?? "unknown");
            Hold(delivery, 0);
            _statistics.AddReleased(1);
            return false;
        }

        var reason = DeadLetterHeaders.Create(result, decision, _engine.Processor.HandlerName, attempts);
        if (!await _calls.SendToDeadLetterAsync(delivery, _reader.DeadLetterRequest(delivery, deadLetterQueue, reason), decision.ReasonCode ?? "unknown").ConfigureAwait(false))
        {
            return false;
        }

        _deletes.Add(delivery);
        Hold(delivery, 0, change: false);
        return true;
    }

    public ValueTask ReturnAsync(Message delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
    {
        if (!_changes.Exists(c => ReferenceEquals(c.Message, delivery)))
        {
            Hold(delivery, SqsMessageReader.ToSeconds(delay));
            if (attemptSpent)
            {
                _statistics.AddRetried();
            }
        }

        return ValueTask.CompletedTask;
    }

    public void PauseIntake()
    {
        // The pollers wait on the engine's store gate before every receive.
    }

    public void ResumeIntake()
    {
    }

    /// <summary>A message without a result: visible again at once, or as late as the message that holds its FIFO group.</summary>
    private void Release(Message message)
    {
        var seconds = _heldGroups is not null && _heldGroups.TryGetValue(SqsMessageReader.GroupId(message) ?? string.Empty, out var held) ? held : 0;
        _changes.Add((message, seconds));
        _statistics.AddReleased(1);
    }

    private void Hold(Message message, int seconds, bool change = true)
    {
        if (change)
        {
            _changes.Add((message, seconds));
        }

        if (_heldGroups is not null)
        {
            _heldGroups[SqsMessageReader.GroupId(message) ?? string.Empty] = seconds;
        }
    }
}
