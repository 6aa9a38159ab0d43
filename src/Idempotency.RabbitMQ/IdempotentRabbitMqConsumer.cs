using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Threading.Channels;
using Idempotency.Delivery;
using Idempotency.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ;

/// <summary>
/// Runs a manual-ack RabbitMQ subscription (<c>basic.consume</c> with <c>autoAck: false</c>) through an
/// <see cref="IdempotentProcessor"/>: every delivery is acknowledged only after its store transaction committed
/// (or when it is a duplicate of a committed one), each on its own (<c>multiple: false</c>).
/// </summary>
/// <remarks>
/// <para>
/// The delivery callback copies the body and hands the delivery to an internal pool of
/// <see cref="RabbitMqIdempotencyOptions.HandlerConcurrency"/> workers; <c>basic.qos</c> bounds how many are outstanding.
/// Failures follow <see cref="DeliveryPolicy"/>: a failing handler is requeued after a backoff and dead-lettered after
/// <c>Retry.MaxAttempts</c>; a store outage pauses consumption (<c>basic.cancel</c>) until <c>PingAsync</c> answers and
/// dead-letters nothing.
/// </para>
/// <para>
/// Use automatic connection recovery (<c>ConnectionFactory.AutomaticRecoveryEnabled</c>, on by default). When a
/// connection drops between commit and ack the broker redelivers the message with <c>Redelivered = true</c>, and it is
/// then a <see cref="ProcessingOutcome.Duplicate"/>: acknowledged, not run again.
/// </para>
/// </remarks>
public sealed class IdempotentRabbitMqConsumer : IAsyncDisposable
{
    private const string Broker = "rabbitmq";
    private const string DeliveryCountHeader = "x-delivery-count";

    private readonly IChannel _channel;
    private readonly IChannel? _deadLetterChannel;
    private readonly bool _ownsChannels;
    private readonly IdempotentProcessor _processor;
    private readonly RabbitMqIdempotencyOptions _options;
    private readonly ILogger _logger;
    private readonly Channel<Work> _buffer;
    private readonly SemaphoreSlim _consumeLock = new(1, 1);
    private readonly CancellationTokenSource _stopping = new();
    private readonly CancellationTokenSource _processing = new();
    private readonly Lock _stateGate = new();
    private Task[] _workers = [];
    private Task? _stopTask;
    private Task? _pauseTask;
    private string? _consumerTag;
    private bool _started;
    private int _paused;
    private DeliveryEngine? _engine;
    private Port? _port;
    private int _inFlight;
    private int _warnedNackDeadLetter;
    private long _acknowledged;
    private long _deadLettered;
    private long _requeued;
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
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public IdempotentRabbitMqConsumer(IChannel channel, IdempotentProcessor processor, RabbitMqIdempotencyOptions options, ILogger? logger = null, IChannel? deadLetterChannel = null)
        : this(channel, deadLetterChannel, ownsChannels: false, processor, options, logger)
    {
    }

    private IdempotentRabbitMqConsumer(IChannel channel, IChannel? deadLetterChannel, bool ownsChannels, IdempotentProcessor processor, RabbitMqIdempotencyOptions options, ILogger? logger)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _channel = channel;
        _deadLetterChannel = deadLetterChannel;
        _ownsChannels = ownsChannels;
        _processor = processor;
        _options = options;
        _logger = logger ?? NullLogger.Instance;

        // Unbounded in code, bounded in practice: the broker never has more than the prefetch count outstanding per consumer.
        _buffer = Channel.CreateUnbounded<Work>(new UnboundedChannelOptions { SingleReader = false, SingleWriter = false });
    }

    /// <summary>Gets or sets the heartbeat this consumer reports its state to (running, paused for the store, misconfigured store, stopped).</summary>
    /// <value>Defaults to <see langword="null"/>; the DI registration sets it from <see cref="Health.ConsumerHealthRegistry"/>. Set it before <see cref="StartAsync"/>.</value>
    public Health.ConsumerHeartbeat? Health { get; set; }

    /// <summary>Gets the queue being consumed.</summary>
    public string Queue => _options.Queue;

    /// <summary>Gets how many deliveries were acknowledged after their commit (processed or duplicate).</summary>
    public long AcknowledgedCount => Interlocked.Read(ref _acknowledged);

    /// <summary>Gets how many deliveries were dead-lettered.</summary>
    public long DeadLetteredCount => Interlocked.Read(ref _deadLettered);

    /// <summary>Gets how many deliveries were handed back to the broker with <c>basic.nack(requeue: true)</c> (retries, outages, shutdown).</summary>
    public long RequeuedCount => Interlocked.Read(ref _requeued);

    /// <summary>Gets how many deliveries arrived with the broker's <c>redelivered</c> flag.</summary>
    public long RedeliveredCount => Interlocked.Read(ref _redelivered);

    /// <summary>Gets how many deliveries this consumer has received and not yet settled (buffered or being processed).</summary>
    public int PendingCount => _buffer.Reader.Count + Volatile.Read(ref _inFlight);

    /// <summary>Gets a value indicating whether consumption is paused because the store is unreachable.</summary>
    public bool IsPaused => Volatile.Read(ref _paused) == 1;

    /// <summary>
    /// Opens a consuming channel and a dead-letter channel with publisher confirmations on <paramref name="connection"/> and
    /// wraps them; the consumer closes both when stopped.
    /// </summary>
    /// <param name="connection">An open connection, ideally with automatic recovery enabled.</param>
    /// <param name="processor">The pipeline every delivery runs through.</param>
    /// <param name="options">The consumer options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="cancellationToken">Cancels opening the channels.</param>
    /// <returns>The consumer, not yet started.</returns>
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public static async Task<IdempotentRabbitMqConsumer> CreateAsync(
        IConnection connection,
        IdempotentProcessor processor,
        RabbitMqIdempotencyOptions options,
        ILogger? logger = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        IChannel? deadLetterChannel = null;
        try
        {
            deadLetterChannel = await connection.CreateChannelAsync(
                new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true),
                cancellationToken).ConfigureAwait(false);
            return new IdempotentRabbitMqConsumer(channel, deadLetterChannel, ownsChannels: true, processor, options, logger);
        }
        catch
        {
            if (deadLetterChannel is not null)
            {
                await deadLetterChannel.DisposeAsync().ConfigureAwait(false);
            }

            await channel.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Sets the prefetch count, starts the workers and subscribes to the queue.</summary>
    /// <param name="cancellationToken">Cancels the subscription call.</param>
    /// <returns>A task that completes when the subscription is active.</returns>
    /// <exception cref="InvalidOperationException">The consumer was already started.</exception>
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

        _engine = new DeliveryEngine(_processor, $"rabbitmq:{_options.Queue}", _logger, heartbeat: Health, maxTrackedMessages: _options.MaxTrackedMessages, stopping: _stopping.Token);
        _port = new Port(this);
        if (Health is { } health)
        {
            health.State = Idempotency.Health.ConsumerState.Running;
            health.Detail = null;
            _ = BeatAsync(health);
        }

        _channel.ChannelShutdownAsync += OnChannelShutdownAsync;
        await _channel.BasicQosAsync(0, (ushort)_options.PrefetchCount, global: false, cancellationToken).ConfigureAwait(false);
        var workers = new Task[_options.HandlerConcurrency];
        for (var i = 0; i < workers.Length; i++)
        {
            workers[i] = Task.Run(WorkerAsync, CancellationToken.None);
        }

        _workers = workers;
        await SubscribeAsync(cancellationToken).ConfigureAwait(false);
        Log.Started(_logger, _options.Queue, _processor.HandlerName, _options.PrefetchCount, _options.HandlerConcurrency, _options.BatchSize);
    }

    /// <summary>
    /// Stops gracefully: cancels the subscription, lets in-flight deliveries finish within
    /// <see cref="RabbitMqIdempotencyOptions.ShutdownTimeout"/> and acknowledges those that committed; deliveries not started,
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
        _consumeLock.Dispose();
        _stopping.Dispose();
        _processing.Dispose();
    }

    /// <summary>A push consumer has no poll loop to beat in: beat while the channel is open and the consumer runs.</summary>
    private async Task BeatAsync(Health.ConsumerHeartbeat health)
    {
        try
        {
            while (!_stopping.IsCancellationRequested)
            {
                if (_channel.IsOpen)
                {
                    health.Beat();
                }

                await Task.Delay(TimeSpan.FromSeconds(1), _stopping.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping.
        }
    }

    private async Task StopCoreAsync(CancellationToken cancellationToken)
    {
        Log.Stopping(_logger, _options.Queue, Volatile.Read(ref _inFlight));
        await _stopping.CancelAsync().ConfigureAwait(false);
        try
        {
            await UnsubscribeAsync().ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The channel may already be closed: nothing more will be delivered either way.
            Log.SettleFailed(_logger, exception, 0, _options.Queue);
        }

        _buffer.Writer.TryComplete();
        var workers = Task.WhenAll(_workers);
        try
        {
            await workers.WaitAsync(_options.ShutdownTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is TimeoutException or OperationCanceledException)
        {
            // In-flight deliveries ran out of time: cancel them; they roll back and are requeued, never acknowledged.
            await _processing.CancelAsync().ConfigureAwait(false);
            await workers.ConfigureAwait(false);
        }

        if (_pauseTask is { } pause)
        {
            await pause.ConfigureAwait(false);
        }

        _channel.ChannelShutdownAsync -= OnChannelShutdownAsync;
        if (Health is { } health)
        {
            health.State = Idempotency.Health.ConsumerState.Stopped;
            health.Detail = "stopped";
        }

        if (_ownsChannels)
        {
            await CloseQuietlyAsync(_channel).ConfigureAwait(false);
            if (_deadLetterChannel is not null)
            {
                await CloseQuietlyAsync(_deadLetterChannel).ConfigureAwait(false);
            }
        }
    }

    private static async Task CloseQuietlyAsync(IChannel channel)
    {
        try
        {
            if (channel.IsOpen)
            {
                await channel.CloseAsync().ConfigureAwait(false);
            }

            await channel.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Closing a channel whose connection is gone: nothing left to release.
        }
    }

    private async Task SubscribeAsync(CancellationToken cancellationToken)
    {
        await _consumeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_consumerTag is not null || _stopping.IsCancellationRequested)
            {
                return;
            }

            var consumer = new AsyncEventingBasicConsumer(_channel);
            consumer.ReceivedAsync += OnReceivedAsync;
            _consumerTag = await _channel.BasicConsumeAsync(
                _options.Queue,
                autoAck: false,
                consumerTag: _options.ConsumerTag ?? string.Empty,
                noLocal: false,
                exclusive: false,
                arguments: null,
                consumer: consumer,
                cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _consumeLock.Release();
        }
    }

    private async Task UnsubscribeAsync()
    {
        await _consumeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (_consumerTag is { } tag)
            {
                _consumerTag = null;
                if (_channel.IsOpen)
                {
                    await _channel.BasicCancelAsync(tag, noWait: false).ConfigureAwait(false);
                }
            }
        }
        finally
        {
            _consumeLock.Release();
        }
    }

    private Task OnChannelShutdownAsync(object sender, ShutdownEventArgs args)
    {
        if (!_stopping.IsCancellationRequested)
        {
            // Unacked deliveries go back to the queue; with automatic recovery the client reopens the channel and the
            // subscription, and what committed comes back as duplicates.
            Log.ChannelShutdown(_logger, _options.Queue, args.Initiator.ToString(), args.ReplyCode, args.ReplyText);
        }

        return Task.CompletedTask;
    }

    /// <summary>The delivery callback: the only place the body is valid, so it is copied here.</summary>
    private async Task OnReceivedAsync(object sender, BasicDeliverEventArgs args)
    {
        var work = CreateWork(args);
        if (!_buffer.Writer.TryWrite(work))
        {
            // Stopping: the workers are gone, give the delivery back.
            await NackAsync(work).ConfigureAwait(false);
        }
    }

    private Work CreateWork(BasicDeliverEventArgs args)
    {
        var body = args.Body.ToArray();
        var properties = args.BasicProperties;
        var key = SelectKey(args, out var keyError);
        var headers = properties.Headers;
        int? deliveryCount = headers is not null && headers.TryGetValue(DeliveryCountHeader, out var count) && count is not null
            ? Convert.ToInt32(count, CultureInfo.InvariantCulture)
            : null;

        var trackId = key is { Length: > 0 } ? key : "sha256:" + Convert.ToHexString(SHA256.HashData(body));
        var attempt = 1;
        if (args.Redelivered || deliveryCount > 0)
        {
            Interlocked.Increment(ref _redelivered);
            IdempotencyMetrics.RecordRedelivered(Broker, _processor.HandlerName, _options.Queue);
            var (failures, requeues) = _engine!.Attempts.Get(trackId);
            attempt = deliveryCount is { } c ? Math.Max(1, c + 1 - requeues) : failures + 1;
        }

        var native = new RabbitMqDelivery(args.DeliveryTag, args.Redelivered, args.Exchange, args.RoutingKey, args.ConsumerTag, properties, body);
        var message = new IncomingMessage(key, body)
        {
            KeyError = keyError,
            Broker = Broker,
            Destination = _options.Queue,
            Headers = headers is { Count: > 0 } ? ToTextHeaders(headers) : null,
            Timestamp = properties.IsTimestampPresent() ? DateTimeOffset.FromUnixTimeSeconds(properties.Timestamp.UnixTime) : null,
            Redelivered = args.Redelivered,
            RedeliveryCause = args.Redelivered ? "redelivery" : null,
            DeliveryAttempt = attempt,
            Native = native,
        };
        return new Work(args.DeliveryTag, message, native, trackId);
    }

    private string? SelectKey(BasicDeliverEventArgs args, out string? keyError)
    {
        keyError = null;
        if (_options.KeySelector is { } selector)
        {
            return selector(args);
        }

        if (_options.KeyHeader is { } header)
        {
            if (args.BasicProperties.Headers is not { } headers || !headers.TryGetValue(header, out var value))
            {
                return null;
            }

            // Bytes are decoded exactly (or refused): a lossy decode would make two different keys one.
            return value is byte[] bytes
                ? IdempotencyKey.TryDecode(bytes, _options.KeyBytesEncoding, out var key, out keyError) ? key : null
                : HeaderText(value);
        }

        return args.BasicProperties.MessageId;
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

    private async Task WorkerAsync()
    {
        var reader = _buffer.Reader;
        var batch = _options.BatchSize > 1 ? new List<Work>(_options.BatchSize) : null;
        try
        {
            while (await reader.WaitToReadAsync().ConfigureAwait(false))
            {
                if (batch is null)
                {
                    if (reader.TryRead(out var work))
                    {
                        await ProcessOneAsync(work).ConfigureAwait(false);
                    }

                    continue;
                }

                batch.Clear();
                await FillBatchAsync(reader, batch).ConfigureAwait(false);
                if (batch.Count > 0)
                {
                    await ProcessBatchAsync(batch).ConfigureAwait(false);
                }
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            Log.WorkerFailed(_logger, exception, _options.Queue);
        }
    }

    private async Task FillBatchAsync(ChannelReader<Work> reader, List<Work> batch)
    {
        var size = _options.BatchSize;
        while (batch.Count < size && reader.TryRead(out var work))
        {
            batch.Add(work);
        }

        if (batch.Count == 0 || batch.Count >= size || _options.BatchMaxWait <= TimeSpan.Zero || _stopping.IsCancellationRequested)
        {
            return;
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stopping.Token);
        timeout.CancelAfter(_options.BatchMaxWait);
        try
        {
            while (batch.Count < size && await reader.WaitToReadAsync(timeout.Token).ConfigureAwait(false))
            {
                while (batch.Count < size && reader.TryRead(out var work))
                {
                    batch.Add(work);
                }
            }
        }
        catch (OperationCanceledException)
        {
            // The batch window closed: process what arrived.
        }
    }

    private async Task ProcessOneAsync(Work work)
    {
        if (await SkipAsync(work).ConfigureAwait(false))
        {
            return;
        }

        Interlocked.Increment(ref _inFlight);
        try
        {
            ProcessingResult result;
            try
            {
                result = await _processor.ProcessAsync(work.Message, _processing.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_processing.IsCancellationRequested)
            {
                await NackAsync(work).ConfigureAwait(false);
                return;
            }

            await SettleAsync(work, result).ConfigureAwait(false);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }

    private async Task ProcessBatchAsync(List<Work> batch)
    {
        var messages = new List<IncomingMessage>(batch.Count);
        var works = new List<Work>(batch.Count);
        foreach (var work in batch)
        {
            if (!await SkipAsync(work).ConfigureAwait(false))
            {
                works.Add(work);
                messages.Add(work.Message);
            }
        }

        if (works.Count == 0)
        {
            return;
        }

        Interlocked.Add(ref _inFlight, works.Count);
        try
        {
            IReadOnlyList<ProcessingResult> results;
            try
            {
                results = await _processor.ProcessBatchAsync(messages, _processing.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_processing.IsCancellationRequested)
            {
                // Some of the batch may have committed before the cancellation; those are duplicates when redelivered.
                foreach (var work in works)
                {
                    await NackAsync(work).ConfigureAwait(false);
                }

                return;
            }

            List<Task>? slow = null;
            for (var i = 0; i < works.Count; i++)
            {
                if (results[i].IsCommitted)
                {
                    await SettleAsync(works[i], results[i]).ConfigureAwait(false);
                }
                else
                {
                    // Retries and pauses wait before requeueing; let them wait side by side.
                    (slow ??= []).Add(SettleAsync(works[i], results[i]));
                }
            }

            if (slow is not null)
            {
                await Task.WhenAll(slow).ConfigureAwait(false);
            }
        }
        finally
        {
            Interlocked.Add(ref _inFlight, -works.Count);
        }
    }

    /// <summary>Returns deliveries that must not be processed now (stopping, or paused for a store outage) to the broker.</summary>
    private async ValueTask<bool> SkipAsync(Work work)
    {
        if (_stopping.IsCancellationRequested)
        {
            _engine!.Attempts.RecordRequeue(work.TrackId);
            await NackAsync(work).ConfigureAwait(false);
            return true;
        }

        if (Volatile.Read(ref _paused) == 1)
        {
            // Hand it back after a short wait, so that deliveries made before the subscription was cancelled do not
            // bounce between broker and consumer; a stop cuts the wait short.
            _engine!.Attempts.RecordRequeue(work.TrackId);
            await DelayAsync(_processor.StoreUnavailableBackoff.InitialDelay).ConfigureAwait(false);
            await NackAsync(work).ConfigureAwait(false);
            return true;
        }

        return false;
    }

    /// <summary>The engine decides (attempts, the store gate, dead-letters); the port below carries it out on the channel.</summary>
    private async Task SettleAsync(Work work, ProcessingResult result)
    {
        await _engine!.SettleAsync(_port!, work, result, work.Message.DeliveryAttempt, _stopping.Token).ConfigureAwait(false);
    }

    private async Task DelayAsync(TimeSpan delay)
    {
        if (delay <= TimeSpan.Zero)
        {
            return;
        }

        try
        {
            // A stop cuts the wait short: the delivery is requeued at once.
            await Task.Delay(delay, _stopping.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }

    private async Task AckAsync(Work work)
    {
        try
        {
            await _channel.BasicAckAsync(work.DeliveryTag, multiple: false, CancellationToken.None).ConfigureAwait(false);
            Interlocked.Increment(ref _acknowledged);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Committed but not acked: the broker redelivers it (redelivered flag) and the pipeline reports a duplicate.
            Log.AckFailed(_logger, exception, work.DeliveryTag, _options.Queue);
        }
    }

    private async Task NackAsync(Work work, bool requeue = true)
    {
        try
        {
            await _channel.BasicNackAsync(work.DeliveryTag, multiple: false, requeue, CancellationToken.None).ConfigureAwait(false);
            if (requeue)
            {
                Interlocked.Increment(ref _requeued);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The channel is gone; the broker requeues every unacknowledged delivery of a closed channel by itself.
            Log.SettleFailed(_logger, exception, work.DeliveryTag, _options.Queue);
        }
    }

    private async Task DeadLetterAsync(Work work, ProcessingResult result, DeliveryDecision decision)
    {
        var attempts = work.Message.DeliveryAttempt;
        var reasonCode = decision.ReasonCode ?? "unknown";
        var published = false;
        if (_deadLetterChannel is not null && _options.DeadLetterExchange is { } exchange)
        {
            var properties = new BasicProperties(work.Native.Properties)
            {
                Persistent = true,
            };
            var headers = properties.Headers is { } existing ? new Dictionary<string, object?>(existing, StringComparer.Ordinal) : new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var (name, value) in DeadLetterHeaders.Create(result, decision, _processor.HandlerName, attempts))
            {
                headers[name] = value;
            }

            headers[RabbitMqDeadLetterHeaders.SourceQueue] = _options.Queue;
            headers[RabbitMqDeadLetterHeaders.SourceExchange] = work.Native.Exchange;
            headers[RabbitMqDeadLetterHeaders.SourceRoutingKey] = work.Native.RoutingKey;
            headers[RabbitMqDeadLetterHeaders.Redelivered] = work.Native.Redelivered ? "true" : "false";
            properties.Headers = headers;
            try
            {
                // Confirms are on for this channel: the call returns once the broker has the dead-letter, and throws when it
                // was nacked or (mandatory) unroutable. Only then is the original acknowledged.
                await _deadLetterChannel.BasicPublishAsync(exchange, _options.DeadLetterRoutingKey ?? work.Native.RoutingKey, mandatory: true, properties, work.Native.Body, CancellationToken.None).ConfigureAwait(false);
                published = true;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                Log.DeadLetterPublishFailed(_logger, exception, _options.Queue, exchange);
            }
        }
        else if (Interlocked.Exchange(ref _warnedNackDeadLetter, 1) == 0)
        {
            Log.NackDeadLetter(_logger, _options.Queue);
        }

        if (published)
        {
            await AckAsync(work).ConfigureAwait(false);
        }
        else
        {
            // The broker dead-letters it through the queue's x-dead-letter-exchange, adding x-death.
            await NackAsync(work, requeue: false).ConfigureAwait(false);
        }

        Interlocked.Increment(ref _deadLettered);
        Log.DeadLettered(_logger, work.Message.Key ?? "(none)", _options.Queue, reasonCode, attempts);
    }

    private void Pause()
    {
        if (Interlocked.CompareExchange(ref _paused, 1, 0) != 0)
        {
            return;
        }

        Log.Paused(_logger, _options.Queue);
        lock (_stateGate)
        {
            _pauseTask = Task.Run(PauseUntilStoreAnswersAsync, CancellationToken.None);
        }
    }

    private async Task PauseUntilStoreAnswersAsync()
    {
        try
        {
            await UnsubscribeAsync().ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            Log.SettleFailed(_logger, exception, 0, _options.Queue);
        }

        var probes = 0;
        while (!_stopping.IsCancellationRequested)
        {
            probes++;
            try
            {
                // One probe loop per consumer, in the gate: it opens when the store answers and is set up.
                await _engine!.Gate.WaitAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            Volatile.Write(ref _paused, 0);
            try
            {
                await SubscribeAsync(_stopping.Token).ConfigureAwait(false);
                Log.Resumed(_logger, _options.Queue, probes);
                return;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // The channel may be recovering; keep the pause and try again.
                Volatile.Write(ref _paused, 1);
                Log.ResumeFailed(_logger, exception, _options.Queue);
                await DelayAsync(_processor.StoreUnavailableBackoff.InitialDelay).ConfigureAwait(false);
            }
        }
    }

    /// <summary>RabbitMQ's ack model for the engine: ack, republish to the dead-letter exchange then ack, nack to requeue.</summary>
    private sealed class Port(IdempotentRabbitMqConsumer consumer) : IDeliveryPort<Work>
    {
        public bool RetriesInPlace => false;

        public string Broker => IdempotentRabbitMqConsumer.Broker;

        public string Destination => consumer._options.Queue;

        public string AttemptId(Work delivery) => delivery.TrackId;

        public async ValueTask AcknowledgeAsync(Work delivery, ProcessingResult result, CancellationToken cancellationToken) => await consumer.AckAsync(delivery).ConfigureAwait(false);

        public async ValueTask<bool> DeadLetterAsync(Work delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
        {
            // Republished with confirms then acked, or nacked to the queue's own dead-letter exchange: settled either way.
            await consumer.DeadLetterAsync(delivery, result, decision).ConfigureAwait(false);
            return true;
        }

        public async ValueTask ReturnAsync(Work delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
        {
            // A stop cuts the wait short: the delivery is requeued at once.
            await consumer.DelayAsync(delay).ConfigureAwait(false);
            await consumer.NackAsync(delivery).ConfigureAwait(false);
        }

        public void PauseIntake() => consumer.Pause();

        public void ResumeIntake()
        {
            // The pause loop resubscribes by itself once the store gate opens.
        }
    }

    private sealed record Work(ulong DeliveryTag, IncomingMessage Message, RabbitMqDelivery Native, string TrackId);
}
