using System.Globalization;
using System.Text;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Delivery;
using Idempotency.Diagnostics;
using Idempotency.Health;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Sqs;

/// <summary>
/// A long-polling SQS consumer that runs every message through an <see cref="IdempotentProcessor"/> and deletes a
/// message only after its effects committed in the store (or after it was explicitly dead-lettered).
/// </summary>
/// <remarks>
/// <para>
/// <see cref="SqsIdempotencyOptions.Pollers"/> loops each receive up to <see cref="SqsIdempotencyOptions.MaxMessages"/>
/// messages, process them (one store transaction per batch by default), then delete the committed ones with one
/// <c>DeleteMessageBatch</c>. While a batch runs longer than <see cref="SqsIdempotencyOptions.HeartbeatFraction"/> of the
/// visibility timeout, its visibility is extended. Failures follow <see cref="DeliveryPolicy"/> with the attempt taken
/// from <c>ApproximateReceiveCount</c>. On FIFO queues messages of one <c>MessageGroupId</c> run in order and a failed
/// message holds back the rest of its group.
/// </para>
/// <para>Usable without DI: create it, call <see cref="RunAsync"/> with a token, cancel the token to stop gracefully.</para>
/// </remarks>
public sealed class IdempotentSqsWorker
{
    /// <summary>The broker name used in telemetry.</summary>
    public const string BrokerName = "aws_sqs";

    private static readonly string[] SystemAttributeNames = ["ApproximateReceiveCount", "MessageGroupId", "MessageDeduplicationId", "SentTimestamp"];

    private readonly IAmazonSQS _sqs;
    private readonly IdempotentProcessor _processor;
    private readonly SqsIdempotencyOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly string _queueName;
    private readonly bool _isFifo;
    private readonly bool _deadLetterIsFifo;
    private int _running;
    private int _inFlightBatches;

    /// <summary>Creates a worker.</summary>
    /// <param name="sqs">The SQS client; not disposed by the worker.</param>
    /// <param name="processor">The pipeline with the store and handler.</param>
    /// <param name="options">The worker's options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock for delays; defaults to <see cref="TimeProvider.System"/>.</param>
    /// <exception cref="ArgumentNullException">A required argument is null.</exception>
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public IdempotentSqsWorker(IAmazonSQS sqs, IdempotentProcessor processor, SqsIdempotencyOptions options, ILogger? logger = null, TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(sqs);
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _sqs = sqs;
        _processor = processor;
        _options = options;
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _isFifo = options.IsFifoQueue;
        _deadLetterIsFifo = options.DeadLetterQueueUrl?.EndsWith(".fifo", StringComparison.Ordinal) == true;
        _queueName = QueueName(options.QueueUrl);
    }

    /// <summary>Gets the options.</summary>
    public SqsIdempotencyOptions Options => _options;

    /// <summary>Gets the pipeline.</summary>
    public IdempotentProcessor Processor => _processor;

    /// <summary>Gets running totals of what the worker did with the queue.</summary>
    public SqsWorkerStatistics Statistics { get; } = new();

    /// <summary>Gets the liveness record the worker beats on every poll (paused while the store is unreachable), for the consumer health check.</summary>
    /// <value>Defaults to <see langword="null"/>; the DI registration sets it from <see cref="ConsumerHealthRegistry"/>.</value>
    public ConsumerHeartbeat? Health { get; init; }

    /// <summary>
    /// Polls and processes until <paramref name="stoppingToken"/> is cancelled, then stops receiving, gives in-flight
    /// batches <see cref="SqsIdempotencyOptions.ShutdownTimeout"/> to finish, deletes what committed and makes the rest
    /// visible again.
    /// </summary>
    /// <param name="stoppingToken">Cancel to stop gracefully.</param>
    /// <returns>A task that completes when the worker has stopped.</returns>
    /// <exception cref="InvalidOperationException">The worker is already running.</exception>
    public async Task RunAsync(CancellationToken stoppingToken)
    {
        if (Interlocked.Exchange(ref _running, 1) == 1)
        {
            throw new InvalidOperationException("This IdempotentSqsWorker is already running.");
        }

        try
        {
            using var processing = new CancellationTokenSource(Timeout.InfiniteTimeSpan, _time);
            using var registration = stoppingToken.Register(() =>
            {
                Log.Draining(_logger, Volatile.Read(ref _inFlightBatches), _options.QueueUrl, _options.ShutdownTimeout);
                processing.CancelAfter(_options.ShutdownTimeout);
            });
            var engine = new DeliveryEngine(_processor, $"sqs:{_queueName}", _logger, _time, Health, stopping: stoppingToken);
            if (Health is not null)
            {
                Health.State = ConsumerState.Running;
                Health.Detail = null;
                Health.Beat();
            }

            Log.Started(_logger, _processor.HandlerName, _options.QueueUrl, _options.Pollers, _options.BatchProcessing);
            await WarnIfRetentionTooShortAsync(stoppingToken).ConfigureAwait(false);
            var pollers = new Task[_options.Pollers];
            for (var i = 0; i < pollers.Length; i++)
            {
                pollers[i] = Task.Run(() => PollAsync(engine, stoppingToken, processing.Token), CancellationToken.None);
            }

            await Task.WhenAll(pollers).ConfigureAwait(false);
        }
        finally
        {
            Log.Stopped(_logger, _processor.HandlerName, Statistics);
            if (Health is not null)
            {
                Health.State = ConsumerState.Stopped;
                Health.Detail = "stopped";
            }

            Volatile.Write(ref _running, 0);
        }
    }

    private async Task PollAsync(DeliveryEngine engine, CancellationToken stopping, CancellationToken processing)
    {
        var request = new ReceiveMessageRequest
        {
            QueueUrl = _options.QueueUrl,
            MaxNumberOfMessages = _options.MaxMessages,
            WaitTimeSeconds = _options.WaitTimeSeconds,
            VisibilityTimeout = _options.VisibilityTimeoutSeconds,
            MessageSystemAttributeNames = [.. SystemAttributeNames],
            MessageAttributeNames = ["All"],
        };

        var settling = Task.CompletedTask;
        while (!stopping.IsCancellationRequested)
        {
            Health?.Beat();
            List<Message>? messages;
            try
            {
                await engine.Gate.WaitAsync(stopping).ConfigureAwait(false);
                var response = await _sqs.ReceiveMessageAsync(request, stopping).ConfigureAwait(false);
                messages = response.Messages;
            }
            catch (OperationCanceledException) when (stopping.IsCancellationRequested)
            {
                break;
            }
#pragma warning disable CA1031 // Any receive failure (network, throttling, credentials) is retried after a pause.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                Statistics.AddReceiveError();
                Log.ReceiveFailed(_logger, exception, _options.QueueUrl);
                if (!await DelayAsync(_options.ReceiveErrorDelay, stopping).ConfigureAwait(false))
                {
                    break;
                }

                continue;
            }

            if (messages is not { Count: > 0 })
            {
                if (_options.WaitTimeSeconds == 0 && !await DelayAsync(TimeSpan.FromMilliseconds(100), stopping).ConfigureAwait(false))
                {
                    break;
                }

                continue;
            }

            Statistics.AddReceived(messages.Count);
            // At most one batch of this poller is being settled (deleted, dead-lettered, released) while the next
            // one is received: the delete round trip overlaps the receive instead of adding to every batch.
            await settling.ConfigureAwait(false);
            Interlocked.Increment(ref _inFlightBatches);
            try
            {
                settling = await HandleReceivedAsync(messages, engine, processing).ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _inFlightBatches);
            }
        }

        await settling.ConfigureAwait(false);
    }

    /// <summary>Processes a batch and returns the task that settles it (its store-outage bookkeeping is done before this returns).</summary>
    private async Task<Task> HandleReceivedAsync(List<Message> messages, DeliveryEngine engine, CancellationToken processing)
    {
        var incoming = new IncomingMessage[messages.Count];
        for (var i = 0; i < incoming.Length; i++)
        {
            incoming[i] = ToIncoming(messages[i]);
        }

        var results = new ProcessingResult?[messages.Count];
        using (var heartbeatStop = new CancellationTokenSource())
        {
            var heartbeat = HeartbeatAsync(messages, heartbeatStop.Token);
            try
            {
                await ProcessAsync(incoming, results, processing).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (processing.IsCancellationRequested)
            {
                // Shutdown timeout: whatever has no result is released below; committed work is a duplicate next time.
            }
#pragma warning disable CA1031 // Core reports failures as outcomes; anything else must not kill the poller.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                Log.BatchCrashed(_logger, exception, messages.Count, _options.QueueUrl);
            }
            finally
            {
                await heartbeatStop.CancelAsync().ConfigureAwait(false);
                await heartbeat.ConfigureAwait(false);
            }
        }

        return SettleAsync(messages, results, engine);
    }

    private async Task ProcessAsync(IncomingMessage[] incoming, ProcessingResult?[] results, CancellationToken cancellationToken)
    {
        if (_isFifo)
        {
            await ProcessFifoAsync(incoming, results, cancellationToken).ConfigureAwait(false);
            return;
        }

        if (_options.BatchProcessing)
        {
            var batch = await _processor.ProcessBatchAsync(incoming, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < batch.Count; i++)
            {
                results[i] = batch[i];
            }

            return;
        }

        var tasks = new Task[incoming.Length];
        for (var i = 0; i < incoming.Length; i++)
        {
            tasks[i] = ProcessOneAsync(incoming, results, i, cancellationToken);
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
    }

    private async Task ProcessOneAsync(IncomingMessage[] incoming, ProcessingResult?[] results, int index, CancellationToken cancellationToken) =>
        results[index] = await _processor.ProcessAsync(incoming[index], cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// FIFO: messages of one group run in delivery order and the first one that does not commit holds back the rest of
    /// its group (they stay without a result and are released behind it). Groups run concurrently: in batch mode as
    /// "waves" (the n-th message of every group in one transaction), else one task per group.
    /// </summary>
    private async Task ProcessFifoAsync(IncomingMessage[] incoming, ProcessingResult?[] results, CancellationToken cancellationToken)
    {
        var groups = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        for (var i = 0; i < incoming.Length; i++)
        {
            var group = GroupId((Message)incoming[i].Native!) ?? string.Empty;
            if (!groups.TryGetValue(group, out var list))
            {
                groups.Add(group, list = []);
            }

            list.Add(i);
        }

        if (!_options.BatchProcessing)
        {
            var tasks = new List<Task>(groups.Count);
            foreach (var group in groups.Values)
            {
                tasks.Add(ProcessGroupAsync(group));
            }

            await Task.WhenAll(tasks).ConfigureAwait(false);
            return;
        }

        var heads = groups.Values.ToList();
        var cursor = new int[heads.Count];
        var blocked = new bool[heads.Count];
        while (true)
        {
            var wave = new List<int>(heads.Count);
            var waveGroup = new List<int>(heads.Count);
            for (var g = 0; g < heads.Count; g++)
            {
                if (!blocked[g] && cursor[g] < heads[g].Count)
                {
                    wave.Add(heads[g][cursor[g]++]);
                    waveGroup.Add(g);
                }
            }

            if (wave.Count == 0)
            {
                return;
            }

            var waveResults = await _processor.ProcessBatchAsync(wave.ConvertAll(i => incoming[i]), cancellationToken).ConfigureAwait(false);
            for (var j = 0; j < wave.Count; j++)
            {
                results[wave[j]] = waveResults[j];
                if (!waveResults[j].IsCommitted)
                {
                    blocked[waveGroup[j]] = true;
                }
            }
        }

        async Task ProcessGroupAsync(List<int> group)
        {
            foreach (var index in group)
            {
                var result = await _processor.ProcessAsync(incoming[index], cancellationToken).ConfigureAwait(false);
                results[index] = result;
                if (!result.IsCommitted)
                {
                    return;
                }
            }
        }
    }

    /// <summary>
    /// The engine decides each message's fate (attempts, the store gate, dead-letters); the batch's port collects the
    /// deletes and visibility changes, sent in as few calls as SQS allows.
    /// </summary>
    private async Task SettleAsync(List<Message> messages, ProcessingResult?[] results, DeliveryEngine engine)
    {
        foreach (var result in results)
        {
            if (result is not null && engine.Gate.Close(result))
            {
                Statistics.AddStoreOutage();
            }
        }

        var port = new BatchPort(this);
        for (var i = 0; i < messages.Count; i++)
        {
            var message = messages[i];
            if (results[i] is not { } result)
            {
                // Not processed (shutdown, a crash, or held behind a failed message of its FIFO group).
                port.Release(message);
                continue;
            }

            await engine.SettleAsync(port, message, result, cancellationToken: CancellationToken.None).ConfigureAwait(false);
        }

        await DeleteAsync(port.Deletes).ConfigureAwait(false);
        if (port.Changes.Count > 0)
        {
            await ChangeVisibilityAsync(port.Changes, CancellationToken.None).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// SQS's ack model for the engine, over one received batch: settle = delete, return = change visibility, dead-letter =
    /// send to the dead-letter queue then delete. On FIFO queues a message held back holds back the rest of its group.
    /// </summary>
    private sealed class BatchPort(IdempotentSqsWorker worker) : IDeliveryPort<Message>
    {
        private readonly Dictionary<string, int>? _heldGroups = worker._isFifo ? new(StringComparer.Ordinal) : null;

        public List<Message> Deletes { get; } = [];

        public List<(Message Message, int Seconds)> Changes { get; } = [];

        public bool RetriesInPlace => false;

        public string Broker => BrokerName;

        public string Destination => worker._queueName;

        public string AttemptId(Message delivery) => delivery.MessageId;

        public ValueTask AcknowledgeAsync(Message delivery, ProcessingResult result, CancellationToken cancellationToken)
        {
            Deletes.Add(delivery);
            return ValueTask.CompletedTask;
        }

        public async ValueTask<bool> DeadLetterAsync(Message delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
        {
            if (worker._options.DeadLetterQueueUrl is null)
            {
                // Dead-lettering left to the queue's RedrivePolicy: visible again at once, so SQS counts the receive.
                Log.LeftToRedrive(worker._logger, delivery.MessageId, worker._options.QueueUrl, decision.ReasonCode ?? "unknown");
                Hold(delivery, 0);
                worker.Statistics.AddReleased(1);
                return false;
            }

            if (!await worker.SendToDeadLetterAsync(delivery, result, decision, attempts).ConfigureAwait(false))
            {
                return false;
            }

            Deletes.Add(delivery);
            Hold(delivery, 0, change: false);
            return true;
        }

        public ValueTask ReturnAsync(Message delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
        {
            if (!Changes.Exists(c => ReferenceEquals(c.Message, delivery)))
            {
                Hold(delivery, ToSeconds(delay));
                if (attemptSpent)
                {
                    worker.Statistics.AddRetried();
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
        public void Release(Message message)
        {
            var seconds = _heldGroups is not null && _heldGroups.TryGetValue(GroupId(message) ?? string.Empty, out var held) ? held : 0;
            Changes.Add((message, seconds));
            worker.Statistics.AddReleased(1);
        }

        private void Hold(Message message, int seconds, bool change = true)
        {
            if (change)
            {
                Changes.Add((message, seconds));
            }

            if (_heldGroups is not null)
            {
                _heldGroups[GroupId(message) ?? string.Empty] = seconds;
            }
        }
    }

    private async Task HeartbeatAsync(List<Message> messages, CancellationToken cancellationToken)
    {
        var period = _options.VisibilityTimeout * _options.HeartbeatFraction;
        var seconds = _options.VisibilityTimeoutSeconds;
        var entries = messages.ConvertAll(m => (m, seconds));
        while (await DelayAsync(period, cancellationToken).ConfigureAwait(false))
        {
            Health?.Beat();
            int failures;
            try
            {
                failures = await ChangeVisibilityAsync(entries, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }

            Statistics.AddVisibilityExtensions(entries.Count - failures);
            Statistics.AddVisibilityExtensionFailures(failures);
        }
    }

    /// <summary>Changes the visibility of messages in batches of 10; returns how many changes failed.</summary>
    private async Task<int> ChangeVisibilityAsync(List<(Message Message, int Seconds)> changes, CancellationToken cancellationToken)
    {
        var failures = 0;
        for (var start = 0; start < changes.Count; start += 10)
        {
            var count = Math.Min(10, changes.Count - start);
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
                var response = await _sqs.ChangeMessageVisibilityBatchAsync(
                    new ChangeMessageVisibilityBatchRequest { QueueUrl = _options.QueueUrl, Entries = entries }, cancellationToken).ConfigureAwait(false);
                foreach (var failed in response.Failed ?? [])
                {
                    failures++;
                    var message = changes[start + int.Parse(failed.Id, CultureInfo.InvariantCulture)].Message;
                    Log.VisibilityEntryFailed(_logger, message.MessageId, _options.QueueUrl, failed.Code ?? "unknown", failed.Message ?? string.Empty);
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
                Log.VisibilityChangeFailed(_logger, exception, count, _options.QueueUrl);
            }
        }

        return failures;
    }

    private async Task DeleteAsync(List<Message> messages)
    {
        for (var start = 0; start < messages.Count; start += 10)
        {
            var count = Math.Min(10, messages.Count - start);
            var entries = new List<DeleteMessageBatchRequestEntry>(count);
            for (var i = 0; i < count; i++)
            {
                entries.Add(new DeleteMessageBatchRequestEntry { Id = i.ToString(CultureInfo.InvariantCulture), ReceiptHandle = messages[start + i].ReceiptHandle });
            }

            try
            {
                // Committed work must be deleted even while stopping, so this call is not cancelled.
                var response = await _sqs.DeleteMessageBatchAsync(new DeleteMessageBatchRequest { QueueUrl = _options.QueueUrl, Entries = entries }, CancellationToken.None).ConfigureAwait(false);
                var failed = response.Failed ?? [];
                foreach (var entry in failed)
                {
                    var message = messages[start + int.Parse(entry.Id, CultureInfo.InvariantCulture)];
                    Log.DeleteFailed(_logger, message.MessageId, _options.QueueUrl, entry.Code ?? "unknown", entry.Message ?? string.Empty);
                }

                Statistics.AddDeleted(count - failed.Count);
                Statistics.AddDeleteFailures(failed.Count);
            }
#pragma warning disable CA1031 // A failed delete is logged and counted; the messages come back and are duplicates.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                Statistics.AddDeleteFailures(count);
                Log.DeleteBatchFailed(_logger, exception, count, _options.QueueUrl);
            }
        }
    }

    private async Task<bool> SendToDeadLetterAsync(Message message, ProcessingResult result, DeliveryDecision decision, int attempt)
    {
        var deadLetterQueue = _options.DeadLetterQueueUrl!;
        var request = new SendMessageRequest
        {
            QueueUrl = deadLetterQueue,
            MessageBody = message.Body,
            MessageAttributes = CreateDeadLetterAttributes(message, result, decision, attempt),
        };
        if (_deadLetterIsFifo)
        {
            request.MessageGroupId = GroupId(message) ?? "dead-letter";
            request.MessageDeduplicationId = message.MessageId;
        }

        try
        {
            await _sqs.SendMessageAsync(request, CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // The message stays in the source queue and is tried again later.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            Statistics.AddDeadLetterFailure();
            Log.DeadLetterFailed(_logger, exception, message.MessageId, deadLetterQueue, _options.QueueUrl);
            return false;
        }

        Statistics.AddDeadLettered();
        Log.DeadLettered(_logger, message.MessageId, _options.QueueUrl, deadLetterQueue, decision.ReasonCode ?? "unknown");
        return true;
    }

    internal Dictionary<string, MessageAttributeValue> CreateDeadLetterAttributes(Message message, ProcessingResult result, DeliveryDecision decision, int attempt)
    {
        var attributes = new Dictionary<string, MessageAttributeValue>(StringComparer.Ordinal);
        var original = message.MessageAttributes ?? [];

        // The key attribute first, so a message moved back to the source queue after a fix keeps its key.
        if (_options.KeyAttributeName is { } keyName && original.TryGetValue(keyName, out var keyValue))
        {
            attributes[keyName] = keyValue;
        }

        var common = DeadLetterHeaders.Create(result, decision, _processor.HandlerName, attempt);
        common[SqsDeadLetterAttributes.SourceQueue] = _options.QueueUrl;
        common[SqsDeadLetterAttributes.MessageId] = message.MessageId;
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

    internal IncomingMessage ToIncoming(Message message)
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
            IdempotencyMetrics.RecordRedelivered(BrokerName, _processor.HandlerName, _queueName);
        }

        return new IncomingMessage(SelectKey(message), Encoding.UTF8.GetBytes(message.Body ?? string.Empty))
        {
            Broker = BrokerName,
            Destination = _queueName,
            Headers = headers,
            Timestamp = sent,
            Redelivered = attempt > 1,
            RedeliveryCause = attempt > 1 ? "redelivery" : null,
            DeliveryAttempt = attempt,
            Native = message,
        };
    }

    /// <summary>The key: the key attribute, else the FIFO deduplication id, else the selector, else (opt-in) the message id.</summary>
    internal string? SelectKey(Message message)
    {
        if (_options.KeyAttributeName is { } name && message.MessageAttributes?.TryGetValue(name, out var attribute) == true &&
            attribute.StringValue is { Length: > 0 } fromAttribute)
        {
            return fromAttribute;
        }

        if (_isFifo && _options.UseDeduplicationIdOnFifo && message.Attributes?.TryGetValue("MessageDeduplicationId", out var dedup) == true && dedup is { Length: > 0 })
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

    private async Task<bool> DelayAsync(TimeSpan delay, CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    private static int ReceiveCount(Message message) =>
        message.Attributes?.TryGetValue("ApproximateReceiveCount", out var text) == true &&
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var count) && count > 0 ? count : 1;

    private static string? GroupId(Message message) =>
        message.Attributes?.TryGetValue("MessageGroupId", out var group) == true ? group : null;

    private static int ToSeconds(TimeSpan delay) =>
        (int)Math.Clamp(Math.Ceiling(delay.TotalSeconds), 0, SqsIdempotencyOptions.MaxVisibilityTimeout.TotalSeconds);

    private static string QueueName(string queueUrl)
    {
        var trimmed = queueUrl.TrimEnd('/');
        var slash = trimmed.LastIndexOf('/');
        return slash >= 0 ? trimmed[(slash + 1)..] : trimmed;
    }

    /// <summary>Reads the queue's MessageRetentionPeriod: a key kept for less time than that can let a late redelivery through.</summary>
    private async Task WarnIfRetentionTooShortAsync(CancellationToken cancellationToken)
    {
        try
        {
            var attributes = await _sqs.GetQueueAttributesAsync(new GetQueueAttributesRequest { QueueUrl = _options.QueueUrl, AttributeNames = ["MessageRetentionPeriod"] }, cancellationToken).ConfigureAwait(false);
            if (attributes.Attributes?.TryGetValue("MessageRetentionPeriod", out var seconds) == true
                && int.TryParse(seconds, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var value))
            {
                RetentionGuard.WarnIfTooShort(_logger, _processor.Options, TimeSpan.FromSeconds(value), $"queue {_options.QueueUrl} MessageRetentionPeriod={value}s");
            }
        }
#pragma warning disable CA1031 // The check is advice: a queue whose attributes cannot be read must still be consumed.
        catch (Exception exception) when (exception is not OperationCanceledException)
#pragma warning restore CA1031
        {
        }
    }
}
