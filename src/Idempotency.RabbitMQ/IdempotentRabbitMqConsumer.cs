using Idempotency.Delivery;
using Idempotency.Health;
using Idempotency.RabbitMQ.Consuming;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ;

/// <summary>
/// Runs a manual-ack RabbitMQ subscription (<c>basic.consume</c> with <c>autoAck: false</c>) through an
/// <see cref="IdempotentProcessor"/>: every delivery is acknowledged only after its store transaction committed
/// (or when it is a duplicate of a committed one); a worker's committed batch goes out as one
/// <c>basic.ack(multiple: true)</c> when every lower delivery of the channel is settled already, otherwise one by one.
/// </summary>
/// <remarks>
/// <para>
/// The delivery callback copies the body and hands the delivery to <see cref="IdempotentConsumerOptions.Concurrency"/>
/// workers; <c>basic.qos</c> bounds how many are outstanding. Core's <see cref="DeliveryEngine"/> decides: a failing
/// handler is requeued after a backoff and dead-lettered after <c>Retry.MaxAttempts</c>; a store outage or
/// misconfiguration pauses consumption (<c>basic.cancel</c>) until the store answers and dead-letters nothing.
/// </para>
/// <para>
/// Use automatic connection recovery (<c>ConnectionFactory.AutomaticRecoveryEnabled</c>, on by default). When a
/// connection drops between commit and ack the broker redelivers the message with <c>Redelivered = true</c>, and it is
/// then a <see cref="ProcessingOutcome.Duplicate"/>: acknowledged, not run again.
/// </para>
/// </remarks>
public sealed class IdempotentRabbitMqConsumer : IIdempotentConsumer
{
    private readonly IChannel _channel;
    private readonly RabbitMqDeadLetterWriter _deadLetters;
    private readonly IConnection? _connection;
    private readonly bool _ownsChannels;
    private readonly IdempotentProcessor _processor;
    private readonly RabbitMqIdempotencyOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly RabbitMqMessageReader _reader;
    private readonly CancellationTokenSource _stopping = new();
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _stateGate = new();
    private Task? _stopTask;
    private Task? _resubscribeTask;
    private Exception? _failure;
    private bool _started;
    private DeliveryEngine? _engine;
    private RabbitMqPort? _port;
    private RabbitMqLanes? _lanes;
    private RabbitMqSubscription? _subscription;
    private long _redelivered;

    /// <summary>Wraps a channel the caller owns (and keeps open); dead-letters go out on <paramref name="deadLetterChannel"/>.</summary>
    /// <param name="channel">The channel to consume and acknowledge on.</param>
    /// <param name="processor">The pipeline every delivery runs through.</param>
    /// <param name="options">The consumer options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="deadLetterChannel">
    /// A channel created with publisher confirmations (and their tracking) enabled, used to republish dead-letters with the
    /// reason headers to <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/>. When <see langword="null"/>, dead-letters
    /// are <c>basic.nack(requeue: false)</c> and carry only the broker's <c>x-death</c> header.
    /// </param>
    /// <param name="timeProvider">The clock of every delay, linger and timeout; defaults to <see cref="TimeProvider.System"/>.</param>
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public IdempotentRabbitMqConsumer(IChannel channel, IdempotentProcessor processor, RabbitMqIdempotencyOptions options, ILogger? logger = null, IChannel? deadLetterChannel = null, TimeProvider? timeProvider = null)
        : this(channel, deadLetterChannel, ownedConnection: null, processor, options, logger, timeProvider)
    {
    }

    // ownedConnection is set exactly when the consumer owns its channels: it then replaces a dead-letter channel a channel
    // error closed, and checks on its own channels whether a deleted queue is back (a caller's channels are not touched).
    private IdempotentRabbitMqConsumer(IChannel channel, IChannel? deadLetterChannel, IConnection? ownedConnection, IdempotentProcessor processor, RabbitMqIdempotencyOptions options, ILogger? logger, TimeProvider? timeProvider)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _channel = channel;
        _connection = ownedConnection;
        _ownsChannels = ownedConnection is not null;
        _processor = processor;
        _options = options;
        _logger = logger ?? NullLogger.Instance;
        _deadLetters = new RabbitMqDeadLetterWriter(deadLetterChannel, ownedConnection is null ? null : RabbitMqChannels.ConfirmingReopener(ownedConnection), options, _logger);
        _time = timeProvider ?? TimeProvider.System;
        _reader = new RabbitMqMessageReader(options, processor.HandlerName, _logger);
    }

    /// <inheritdoc/>
    public string Name => $"rabbitmq:{_processor.HandlerName}";

    /// <inheritdoc/>
    public IdempotentProcessor Processor => _processor;

    /// <summary>Gets or sets the heartbeat this consumer reports its state to (running, paused for the store, misconfigured store, stopped).</summary>
    /// <value>Defaults to <see langword="null"/>; the DI registration sets it from <see cref="ConsumerHealthRegistry"/>. Set it before <see cref="StartAsync"/>.</value>
    public ConsumerHeartbeat? Health { get; set; }

    /// <inheritdoc/>
    public Task Completion => _completion.Task;

    /// <summary>Gets the queue being consumed.</summary>
    public string Queue => _options.Queue;

    /// <summary>Gets how many deliveries were acknowledged after their commit (processed or duplicate).</summary>
    public long AcknowledgedCount => _port?.Acknowledged ?? 0;

    /// <summary>Gets how many <c>basic.ack</c> frames acknowledged them (a multiple ack counts once).</summary>
    internal long AckFrames => _port?.AckFrames ?? 0;

    /// <summary>Gets how many deliveries were dead-lettered.</summary>
    public long DeadLetteredCount => _port?.DeadLettered ?? 0;

    /// <summary>Gets how many deliveries were handed back to the broker with <c>basic.nack(requeue: true)</c> (retries, outages, shutdown).</summary>
    public long RequeuedCount => _port?.Requeued ?? 0;

    /// <summary>Gets how many deliveries arrived with the broker's <c>redelivered</c> flag.</summary>
    public long RedeliveredCount => Interlocked.Read(ref _redelivered);

    /// <summary>Gets how many deliveries this consumer has received and not yet settled (buffered or being processed).</summary>
    public int PendingCount => _lanes?.Pending ?? 0;

    /// <summary>Gets a value indicating whether consumption is paused because the store is unreachable or misconfigured.</summary>
    public bool IsPaused => _subscription?.IsPaused ?? false;

    /// <summary>
    /// Opens a consuming channel and a dead-letter channel with publisher confirmations on <paramref name="connection"/> and
    /// wraps them; the consumer closes both when stopped.
    /// </summary>
    /// <param name="connection">An open connection, ideally with automatic recovery enabled.</param>
    /// <param name="processor">The pipeline every delivery runs through.</param>
    /// <param name="options">The consumer options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">The clock of every delay, linger and timeout; defaults to <see cref="TimeProvider.System"/>.</param>
    /// <param name="cancellationToken">Cancels opening the channels.</param>
    /// <returns>The consumer, not yet started.</returns>
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public static async Task<IdempotentRabbitMqConsumer> CreateAsync(
        IConnection connection,
        IdempotentProcessor processor,
        RabbitMqIdempotencyOptions options,
        ILogger? logger = null,
        TimeProvider? timeProvider = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var (channel, deadLetterChannel) = await RabbitMqChannels.OpenAsync(connection, cancellationToken).ConfigureAwait(false);
        return new IdempotentRabbitMqConsumer(channel, deadLetterChannel, connection, processor, options, logger, timeProvider);
    }

    /// <summary>Sets the prefetch count, starts the workers and subscribes to the queue.</summary>
    /// <param name="cancellationToken">Cancels the subscription call.</param>
    /// <returns>A task that completes when the subscription is active.</returns>
    /// <exception cref="InvalidOperationException">The consumer was already started, or <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/> does not exist on the broker.</exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        lock (_stateGate)
        {
            if (_started)
            {
                throw new InvalidOperationException("The consumer was already started; create a new one to consume again.");
            }

            _started = true;
        }

        // A dead-letter exchange that does not exist would fail every dead-letter: refuse to start instead.
        await _deadLetters.VerifyExchangeAsync(cancellationToken).ConfigureAwait(false);
        _engine = new DeliveryEngine(_processor, Name, _logger, _time, Health, _options.MaxTrackedMessages, _stopping.Token, _options.Observers);
        _subscription = new RabbitMqSubscription(_channel, _options, OnReceivedAsync, OnCancelledByBroker, _logger, _stopping.Token);
        _port = new RabbitMqPort(_channel, _deadLetters, _options.Queue, _processor.HandlerName, _logger, _time, Pause, _stopping.Token, _options.PrefetchCount);
        _lanes = new RabbitMqLanes(_options, _engine, _port, _logger, _time, () => IsPaused, Fail, _stopping.Token);
        if (Health is { } health)
        {
            health.State = ConsumerState.Running;
            health.Detail = null;
            _ = BeatAsync(health);
        }

        _channel.ChannelShutdownAsync += OnChannelShutdownAsync;
        await _channel.BasicQosAsync(0, (ushort)_options.PrefetchCount, global: false, cancellationToken).ConfigureAwait(false);
        _lanes.Start();
        await _subscription.SubscribeAsync(cancellationToken).ConfigureAwait(false);
        Log.Started(_logger, _options.Queue, _processor.HandlerName, _options.PrefetchCount, _options.Concurrency, _options.BatchSize);
    }

    /// <summary>
    /// Stops gracefully: cancels the subscription, lets in-flight deliveries finish within
    /// <see cref="IdempotentConsumerOptions.ShutdownTimeout"/> and acknowledges those that committed; deliveries not started,
    /// or cancelled at the timeout, are returned unacknowledged (<c>basic.nack(requeue: true)</c>) and nothing uncommitted is acked.
    /// </summary>
    /// <param name="cancellationToken">Shortens the wait for in-flight deliveries.</param>
    /// <returns>A task that completes when every worker has stopped.</returns>
    public Task StopAsync(CancellationToken cancellationToken = default)
    {
        lock (_stateGate)
        {
            return _stopTask ??= StopCoreAsync(cancellationToken);
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await StopAsync().ConfigureAwait(false);
        _subscription?.Dispose();
        _stopping.Dispose();
    }

    /// <summary>A push consumer has no poll loop to beat in: beat while the channel is open and the consumer runs.</summary>
    private async Task BeatAsync(ConsumerHeartbeat health)
    {
        try
        {
            while (!_stopping.IsCancellationRequested)
            {
                if (_channel.IsOpen)
                {
                    health.Beat();
                }

                await Task.Delay(TimeSpan.FromSeconds(1), _time, _stopping.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping.
        }
    }

    private async Task StopCoreAsync(CancellationToken cancellationToken)
    {
        try
        {
            Log.Stopping(_logger, _options.Queue, _lanes?.InFlight ?? 0);
            await _stopping.CancelAsync().ConfigureAwait(false);
            if (_subscription is { } subscription)
            {
                await subscription.UnsubscribeAsync().ConfigureAwait(false);
                await _lanes!.DrainAsync(_options.ShutdownTimeout, cancellationToken).ConfigureAwait(false);
                await subscription.WaitPauseAsync().ConfigureAwait(false);
            }

            _channel.ChannelShutdownAsync -= OnChannelShutdownAsync;
            if (_resubscribeTask is { } resubscribe)
            {
                await resubscribe.ConfigureAwait(false);
            }

            if (Health is { } health)
            {
                health.State = ConsumerState.Stopped;
                health.Detail = Volatile.Read(ref _failure) is { } failure ? "failed: " + failure.Message : "stopped";
            }

            if (_ownsChannels)
            {
                await RabbitMqChannels.CloseQuietlyAsync(_channel).ConfigureAwait(false);
                await RabbitMqChannels.CloseQuietlyAsync(_deadLetters.Channel).ConfigureAwait(false);
            }
        }
        finally
        {
            if (Volatile.Read(ref _failure) is { } failure)
            {
                _completion.TrySetException(failure);
            }
            else
            {
                _completion.TrySetResult();
            }
        }
    }

    /// <summary>A worker died on an error it cannot recover from: stop, and fault <see cref="Completion"/> with it.</summary>
    private void Fail(Exception exception)
    {
        Interlocked.CompareExchange(ref _failure, exception, null);
        _ = StopAsync();
    }

    private Task OnChannelShutdownAsync(object sender, ShutdownEventArgs args)
    {
        if (_stopping.IsCancellationRequested)
        {
            return Task.CompletedTask;
        }

        // Unacked deliveries go back to the queue either way, and what committed comes back as duplicates.
        Log.ChannelShutdown(_logger, _options.Queue, args.Initiator.ToString(), args.ReplyCode, args.ReplyText);
        if (RabbitMqChannels.IsChannelError(args))
        {
            // Automatic recovery reopens channels after a connection loss only: a channel the broker closed on its own
            // (a 404 on it, 406 consumer_timeout) stays closed, and the consumer would consume nothing, looking alive.
            Log.ChannelClosedByBroker(_logger, _options.Queue, args.ReplyCode, args.ReplyText);
            Fail(new InvalidOperationException(
                $"The broker closed the channel consuming queue '{_options.Queue}' ({args.ReplyCode} {args.ReplyText}); a closed channel is not recovered, so the consumer stopped."));
        }

        return Task.CompletedTask;
    }

    /// <summary>
    /// The broker cancelled the subscription (<c>basic.cancel</c>: the queue was deleted, or its node went away). A consumer
    /// that owns its channels waits for the queue to be back and subscribes again, reporting itself paused meanwhile; on a
    /// caller's channel it cannot check without risking that channel (a passive declare of a missing queue closes it), so it
    /// stops and faults <see cref="Completion"/>.
    /// </summary>
    private void OnCancelledByBroker(string consumerTag)
    {
        if (_stopping.IsCancellationRequested)
        {
            return;
        }

        Log.CancelledByBroker(_logger, _options.Queue, consumerTag, _connection is not null);
        if (_connection is not { } connection)
        {
            // The client still records the cancelled consumer, and a later connection recovery would bring it back to a
            // stopped consumer: drop the record (off the broker's callback, which this cancel would otherwise wait on).
            _ = Task.Run(() => _subscription!.ForgetAsync(consumerTag), CancellationToken.None);
            Fail(new InvalidOperationException(
                $"The broker cancelled the subscription to queue '{_options.Queue}' (consumer tag {consumerTag}; deleted queue?); on a channel the consumer does not own it cannot tell when the queue is back, so it stopped."));
            return;
        }

        if (Health is { } health)
        {
            health.State = ConsumerState.Paused;
            health.Detail = $"the broker cancelled the subscription to queue '{_options.Queue}' (deleted queue?); subscribing again once it exists";
        }

        lock (_stateGate)
        {
            if (_stopTask is null)
            {
                _resubscribeTask = Task.Run(() => ResubscribeWhenQueueExistsAsync(connection, consumerTag), CancellationToken.None);
            }
        }
    }

    private async Task ResubscribeWhenQueueExistsAsync(IConnection connection, string cancelledTag)
    {
        var delay = TimeSpan.FromSeconds(1);
        var maxDelay = TimeSpan.FromSeconds(30);
        var probes = 0;
        while (!_stopping.IsCancellationRequested && _channel.IsOpen)
        {
            await _port!.DelayAsync(delay).ConfigureAwait(false);
            probes++;
            if (_stopping.IsCancellationRequested || !await RabbitMqChannels.QueueExistsAsync(connection, _options.Queue, _stopping.Token).ConfigureAwait(false))
            {
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, maxDelay.Ticks));
                continue;
            }

            if (_subscription!.IsPaused)
            {
                // Paused for the store: its resume subscribes (and reports health) once the store answers.
                return;
            }

            try
            {
                await _subscription.SubscribeAsync(_stopping.Token, cancelledTag).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // Deleted again in between (the 404 closes the channel, which stops the consumer), or the connection is down.
                Log.ResumeFailed(_logger, exception, _options.Queue);
                continue;
            }

            if (Health is { } health)
            {
                health.State = ConsumerState.Running;
                health.Detail = null;
            }

            Log.Resubscribed(_logger, _options.Queue, probes);
            return;
        }
    }

    /// <summary>The delivery callback: the only place the body is valid, so it is copied here.</summary>
    private async Task OnReceivedAsync(object sender, BasicDeliverEventArgs args)
    {
        try
        {
            var work = _reader.Read(args, _engine!.Attempts);
            if (args.Redelivered)
            {
                Interlocked.Increment(ref _redelivered);
            }

            await _lanes!.AddAsync(work).ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The reader does not throw on message content, so this is a bug: an exception escaping the callback would leave
            // the delivery unacked for good, holding a prefetch slot while the consumer looks alive. Hand it back and stop
            // loudly (Completion faults) rather than stall or loop on it.
            Log.DeliveryCallbackFailed(_logger, exception, args.DeliveryTag, _options.Queue);
            await RequeueQuietlyAsync(args.DeliveryTag).ConfigureAwait(false);

            // Stop that consumer's deliveries too, or the requeued one comes straight back to a consumer that fails it.
            await _subscription!.ForgetAsync(args.ConsumerTag).ConfigureAwait(false);
            Fail(exception);
        }
    }

    private async Task RequeueQuietlyAsync(ulong deliveryTag)
    {
        try
        {
            await _channel.BasicNackAsync(deliveryTag, multiple: false, requeue: true, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The channel is gone: the broker requeues its unacknowledged deliveries by itself.
            Log.SettleFailed(_logger, exception, deliveryTag, _options.Queue);
        }
    }

    /// <summary>The store is down or misconfigured: <c>basic.cancel</c> until the engine's store gate opens, then consume again.</summary>
    private void Pause() =>
        _subscription!.Pause(_engine!.Gate, _processor.StoreUnavailableBackoff.InitialDelay, _port!.DelayAsync);
}
