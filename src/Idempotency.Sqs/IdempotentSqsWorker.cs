using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Delivery;
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
/// <see cref="IdempotentConsumerOptions.Concurrency"/> pollers each receive up to <see cref="SqsIdempotencyOptions.MaxMessages"/>
/// messages, process them (natural batching: up to <see cref="IdempotentConsumerOptions.BatchSize"/> per store
/// transaction), then delete the committed ones with one <c>DeleteMessageBatch</c>. While a receive runs longer than
/// <see cref="SqsIdempotencyOptions.HeartbeatFraction"/> of the visibility timeout, its visibility is extended. The
/// <see cref="DeliveryEngine"/> decides retries and dead-letters, counting handler attempts per message id in this
/// process (a store outage never spends one). On FIFO queues messages of one <c>MessageGroupId</c> run in order and a
/// failed message holds back the rest of its group.
/// </para>
/// <para>Usable without DI: create it, then <see cref="StartAsync"/> and <see cref="StopAsync"/>, or <c>RunAsync(token)</c>.</para>
/// </remarks>
public sealed class IdempotentSqsWorker : IIdempotentConsumer
{
    /// <summary>The broker name used in telemetry.</summary>
    public const string BrokerName = "aws_sqs";

    private readonly IAmazonSQS _sqs;
    private readonly IdempotentProcessor _processor;
    private readonly SqsIdempotencyOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly SqsMessageReader _reader;
    private readonly SqsQueueCalls _calls;
    /// <summary>How many receives in a row must fail before a transient-looking failure degrades health (one blip does not).</summary>
    private const int FailedReceivesBeforeDegraded = 3;

    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _processing;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private DeliveryEngine? _engine;
    private Task _receiving = Task.CompletedTask;
    private int _started;
    private int _inFlightReceives;
    private int _failedReceivesInARow;
    private string? _receiveTroubleDetail;
    private bool _queuesChecked;

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
        _processing = new CancellationTokenSource(Timeout.InfiniteTimeSpan, _time);
        _reader = new SqsMessageReader(options, processor.HandlerName, _logger);
        _calls = new SqsQueueCalls(sqs, options, Statistics, _logger);
    }

    /// <inheritdoc/>
    public string Name => $"sqs:{_processor.HandlerName}";

    /// <summary>Gets the options.</summary>
    public SqsIdempotencyOptions Options => _options;

    /// <inheritdoc/>
    public IdempotentProcessor Processor => _processor;

    /// <summary>Gets running totals of what the worker did with the queue.</summary>
    public SqsWorkerStatistics Statistics { get; } = new();

    /// <summary>Gets the liveness record the worker beats on every poll (paused while the store is unreachable), for the consumer health check.</summary>
    /// <value>Defaults to <see langword="null"/>; the DI registration sets it from <see cref="ConsumerHealthRegistry"/>.</value>
    public ConsumerHeartbeat? Health { get; init; }

    /// <inheritdoc/>
    public Task Completion => _completion.Task;

    /// <summary>
    /// Starts the pollers; returns once the queue and the dead-letter queue were checked (processing runs in the background).
    /// </summary>
    /// <param name="cancellationToken">Cancels starting.</param>
    /// <returns>A task that completes when started.</returns>
    /// <exception cref="InvalidOperationException">
    /// The worker was started before (a worker runs once), or <see cref="SqsIdempotencyOptions.QueueUrl"/> or
    /// <see cref="SqsIdempotencyOptions.DeadLetterQueueUrl"/> names a queue that does not exist or that the credentials
    /// may not use; the message names the setting.
    /// </exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) == 1)
        {
            throw new InvalidOperationException("This IdempotentSqsWorker was started already; create a new one to run again.");
        }

        _engine = new DeliveryEngine(_processor, Name, _logger, _time, Health, _options.MaxTrackedMessages, _stopping.Token, _options.Observers);
        Statistics.Gate = _engine.Gate;
        Health?.MarkStarted();

        Log.Started(_logger, _processor.HandlerName, _options.QueueUrl, _options.Concurrency, _options.BatchSize);
        try
        {
            await CheckQueuesAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Finish(null);
            throw;
        }
        catch (InvalidOperationException misconfigured)
        {
            Finish(misconfigured);
            throw;
        }

        _receiving = RunPollersAsync(_engine);
    }

    /// <summary>
    /// Stops receiving, gives in-flight receives <see cref="IdempotentConsumerOptions.ShutdownTimeout"/> to finish, deletes
    /// what committed and makes the rest visible again.
    /// </summary>
    /// <param name="cancellationToken">Cuts the drain short: what has not committed is made visible again at once.</param>
    /// <returns>A task that completes when stopped.</returns>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        if (Volatile.Read(ref _started) == 0)
        {
            _completion.TrySetResult();
            return;
        }

        if (!_stopping.IsCancellationRequested)
        {
            Log.Draining(_logger, Volatile.Read(ref _inFlightReceives), _options.QueueUrl, _options.ShutdownTimeout);
            await _stopping.CancelAsync().ConfigureAwait(false);
            var drain = new ShutdownDrain($"SQS worker of {_options.QueueUrl}", _time, _logger);
            await drain.DrainAsync(_receiving, _options.ShutdownTimeout, _processing.Cancel, cancellationToken).ConfigureAwait(false);
        }

        using var cut = cancellationToken.Register(() => _processing.Cancel());
        try
        {
            await _completion.Task.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // A failure is reported by Completion; stopping itself succeeded.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    /// <summary>Stops (draining as <see cref="StopAsync"/>) and releases the worker's resources.</summary>
    /// <returns>A task that completes when disposed.</returns>
    public async ValueTask DisposeAsync()
    {
        await StopAsync(CancellationToken.None).ConfigureAwait(false);
        _stopping.Dispose();
        _processing.Dispose();
    }

    private async Task RunPollersAsync(DeliveryEngine engine)
    {
        try
        {
            var pollers = new Task[_options.Concurrency];
            for (var i = 0; i < pollers.Length; i++)
            {
                pollers[i] = Task.Run(() => PollAsync(engine), CancellationToken.None);
            }

            await Task.WhenAll(pollers).ConfigureAwait(false);
            Finish(null);
        }
#pragma warning disable CA1031 // Reported through Completion.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            Finish(exception);
        }
    }

    private void Finish(Exception? failure)
    {
        Log.Stopped(_logger, _processor.HandlerName, Statistics);
        Health?.MarkStopped(failure);

        if (failure is null)
        {
            _completion.TrySetResult();
        }
        else
        {
            _completion.TrySetException(failure);
        }
    }

    private async Task PollAsync(DeliveryEngine engine)
    {
        var stopping = _stopping.Token;
        var request = new ReceiveMessageRequest
        {
            QueueUrl = _options.QueueUrl,
            MaxNumberOfMessages = _options.MaxMessages,
            WaitTimeSeconds = _options.WaitTimeSeconds,
            VisibilityTimeout = _options.VisibilityTimeoutSeconds,
            MessageSystemAttributeNames = [.. SqsMessageReader.SystemAttributeNames],
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
                messages = (await _sqs.ReceiveMessageAsync(request, stopping).ConfigureAwait(false)).Messages;
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
                ReportReceiveFailure(exception);
                if (!await DelayAsync(_options.ReceiveErrorDelay, stopping).ConfigureAwait(false))
                {
                    break;
                }

                continue;
            }

            ReportReceiveSucceeded();

            if (messages is not { Count: > 0 })
            {
                if (_options.WaitTimeSeconds == 0 && !await DelayAsync(TimeSpan.FromMilliseconds(100), stopping).ConfigureAwait(false))
                {
                    break;
                }

                continue;
            }

            Statistics.AddReceived(messages.Count);
            // At most one receive of this poller is being settled (deleted, dead-lettered, released) while the next
            // one is received: the delete round trip overlaps the receive instead of adding to every batch.
            await settling.ConfigureAwait(false);
            Interlocked.Increment(ref _inFlightReceives);
            try
            {
                settling = await HandleReceivedAsync(messages, engine).ConfigureAwait(false);
            }
            finally
            {
                Interlocked.Decrement(ref _inFlightReceives);
            }
        }

        await settling.ConfigureAwait(false);
    }

    /// <summary>Processes a receive and returns the task that settles it (its store failures are decided before this returns).</summary>
    private async Task<Task> HandleReceivedAsync(List<Message> messages, DeliveryEngine engine)
    {
        var processing = _processing.Token;
        var incoming = messages.ConvertAll(_reader.ToIncoming);
        var results = new ProcessingResult?[messages.Count];
        await using (SqsVisibilityExtender.Start(_calls, _options, Statistics, Health, _time, messages).ConfigureAwait(false))
        {
            try
            {
                await SqsReceiveLanes.ProcessAsync(engine, incoming, results, _options.IsFifoQueue, _options.BatchSize, processing).ConfigureAwait(false);
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
        }

        var settlement = new SqsReceiveSettlement(engine, _calls, _reader, _options, Statistics, _logger);
        return await settlement.SettleAsync(messages, results).ConfigureAwait(false);
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

    /// <summary>
    /// Reads the queue's attributes, and the dead-letter queue's when one is set, once (the hosted service checks before
    /// the host starts, the worker's start then skips it). A queue that does not exist is a misconfiguration: without
    /// the check the worker would start and every receive, or every dead-letter, would fail for ever. Any other failure
    /// (access denied to the attributes, which a least-privilege policy may withhold from a consumer that can receive; a
    /// timeout; an unreachable endpoint) does not stop the start: it is logged, and receives report through health.
    /// </summary>
    /// <param name="cancellationToken">Cancels the check.</param>
    /// <returns>A task that completes when the queues were checked.</returns>
    /// <exception cref="InvalidOperationException">A queue does not exist; the message names the setting.</exception>
    internal async Task CheckQueuesAsync(CancellationToken cancellationToken)
    {
        if (_queuesChecked)
        {
            return;
        }

        var attributes = await ReadQueueAttributesAsync(nameof(SqsIdempotencyOptions.QueueUrl), _options.QueueUrl, "MessageRetentionPeriod", cancellationToken).ConfigureAwait(false);
        if (attributes?.TryGetValue("MessageRetentionPeriod", out var seconds) == true
            && int.TryParse(seconds, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var value))
        {
            // A key kept for less time than the queue keeps a message can let a late redelivery through.
            RetentionGuard.WarnIfTooShort(_logger, _processor.Options, TimeSpan.FromSeconds(value), $"queue {_options.QueueUrl} MessageRetentionPeriod={value}s", _processor.Store);
        }

        if (_options.DeadLetterQueueUrl is { } deadLetterQueue)
        {
            await ReadQueueAttributesAsync(nameof(SqsIdempotencyOptions.DeadLetterQueueUrl), deadLetterQueue, "QueueArn", cancellationToken).ConfigureAwait(false);
        }

        _queuesChecked = true;
    }

    private async Task<Dictionary<string, string>?> ReadQueueAttributesAsync(string setting, string queueUrl, string attribute, CancellationToken cancellationToken)
    {
        try
        {
            var response = await _sqs.GetQueueAttributesAsync(new GetQueueAttributesRequest { QueueUrl = queueUrl, AttributeNames = [attribute] }, cancellationToken).ConfigureAwait(false);
            return response.Attributes;
        }
        // Only a queue that does not exist fails the start. Access denied to the attributes does not: a least-privilege
        // policy may allow receiving from the queue (or sending to the dead-letter queue) but not reading its attributes;
        // a receive that is refused shows in health once the consumer runs.
        catch (AmazonSQSException exception) when (SqsQueueErrors.IsMissingQueue(exception))
        {
            throw new InvalidOperationException(
                $"SQS consumer '{_processor.HandlerName}': {setting} '{queueUrl}' {SqsQueueErrors.Describe(exception)}. Create the queue or correct {nameof(SqsIdempotencyOptions)}.{setting}.",
                exception);
        }
#pragma warning disable CA1031 // Not a misconfiguration (a timeout, an endpoint not answering yet): the poll loop retries and reports it.
        catch (Exception exception) when (exception is not OperationCanceledException)
#pragma warning restore CA1031
        {
            Log.QueueCheckFailed(_logger, exception, setting, queueUrl);
            return null;
        }
    }

    /// <summary>
    /// Counts a failed receive. A queue that does not exist or may not be used makes the consumer misconfigured at once
    /// (unhealthy); other failures make it paused (degraded) once they persist. The poll loop still retries.
    /// </summary>
    private void ReportReceiveFailure(Exception exception)
    {
        var inARow = Interlocked.Increment(ref _failedReceivesInARow);
        var misconfigured = exception is AmazonSQSException sqsError && SqsQueueErrors.IsMisconfiguration(sqsError);
        if (Health is not { } health || (!misconfigured && inARow < FailedReceivesBeforeDegraded))
        {
            return;
        }

        var cause = exception is AmazonSQSException error ? SqsQueueErrors.Describe(error) : $"{exception.GetType().Name}: {exception.Message}";
        var detail = $"receiving from {_options.QueueUrl} failed {inARow} time(s) in a row: {cause}";
        var state = misconfigured ? ConsumerState.Misconfigured : ConsumerState.Paused;
        if (Volatile.Read(ref _receiveTroubleDetail) is null)
        {
            Log.ReceiveFailing(_logger, exception, _options.QueueUrl, inARow, state);
        }

        Volatile.Write(ref _receiveTroubleDetail, detail);
        health.State = state;
        health.Detail = detail;
    }

    /// <summary>Clears the trouble a failed receive reported, leaving a state the store gate set in the meantime alone.</summary>
    private void ReportReceiveSucceeded()
    {
        if (Interlocked.Exchange(ref _failedReceivesInARow, 0) == 0 || Interlocked.Exchange(ref _receiveTroubleDetail, null) is not { } reported)
        {
            return;
        }

        Log.ReceiveRecovered(_logger, _options.QueueUrl);
        if (Health is { } health && ReferenceEquals(health.Detail, reported))
        {
            health.State = ConsumerState.Running;
            health.Detail = null;
        }
    }
}
