using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.Health;
using Idempotency.Kafka.Consuming;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Kafka;

/// <summary>
/// Runs a Confluent.Kafka consume loop through the idempotency pipeline: every message is claimed, handled and
/// recorded in one store transaction, and the group's offset moves only past messages whose transaction committed
/// (or that were dead-lettered and acknowledged by the dead-letter topic).
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <remarks>
/// <para>
/// One thread runs <c>Consume</c> and owns every call on the consumer (commit, pause, resume). Each assigned partition
/// has its own worker that processes its messages strictly in offset order; up to
/// <see cref="IdempotentConsumerOptions.Concurrency"/> partitions run at once.
/// </para>
/// <para>
/// Lifecycle (<see cref="IIdempotentConsumer"/>, the same on every broker): <see cref="StartAsync"/>, then
/// <see cref="StopAsync"/> or <see cref="DisposeAsync"/>; or <c>await consumer.RunAsync(stoppingToken)</c>
/// (<see cref="IdempotentConsumerExtensions.RunAsync"/>) until the token is cancelled.
/// </para>
/// <para>
/// Offsets are committed explicitly (<c>enable.auto.commit=false</c>) with <c>Commit(offsets)</c>, for each partition
/// the offset after its last completed message. Commits are lazy (every
/// <see cref="KafkaIdempotencyOptions.CommitEveryMessages"/> messages or <see cref="KafkaIdempotencyOptions.CommitInterval"/>):
/// what a crash leaves uncommitted is redelivered and skipped as a duplicate.
/// </para>
/// </remarks>
public sealed class IdempotentKafkaConsumer<TKey, TValue> : IIdempotentConsumer, IDisposable
{
    private readonly IdempotentProcessor _processor;
    private readonly KafkaIdempotencyOptions _options;
    private readonly IProducer<byte[]?, byte[]?> _deadLetterProducer;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly bool _ownsDeadLetterProducer;
    private readonly bool _hasRebalanceHandlers;
    private readonly KafkaConsumerHooks _hooks = new();
    private IConsumer<TKey, TValue> _consumer = null!;
    private bool _ownsConsumer;

    /// <summary>The group whose positions go to the store (<see cref="KafkaOffsetStorage.BrokerAndStore"/>); null when they do not.</summary>
    private string? _positionGroup;
    private readonly CancellationTokenSource _stopping = new();
    private LaneContext<TKey, TValue>? _context;
    private KafkaConsumeLoop<TKey, TValue>? _loop;
    private RebalanceHandler<TKey, TValue>? _rebalance;
    private Task _completion = Task.CompletedTask;
    private int _started;
    private bool _disposed;

    /// <summary>
    /// Wraps a consumer you built. Build it with <c>EnableAutoCommit = false</c>: the wrapper commits offsets itself,
    /// and auto-commit would commit offsets of messages that are fetched but not yet processed.
    /// </summary>
    /// <param name="consumer">The consumer; subscribed already, or subscribed to <see cref="KafkaIdempotencyOptions.Topics"/> at start.</param>
    /// <param name="processor">The idempotency pipeline with the handler.</param>
    /// <param name="options">Kafka options; validated here.</param>
    /// <param name="deadLetterProducer">Produces dead-letters (raw bytes).</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <remarks>
    /// A consumer built without the wrapper's rebalance handlers (use <see cref="Create"/> to get them) learns of a revoke
    /// only after it happened: the revoked partitions' in-flight work is cancelled and their last offsets may not be
    /// committed, so the new owner sees more duplicates. Effects are still applied once.
    /// </remarks>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    public IdempotentKafkaConsumer(
        IConsumer<TKey, TValue> consumer,
        IdempotentProcessor processor,
        KafkaIdempotencyOptions options,
        IProducer<byte[]?, byte[]?> deadLetterProducer,
        ILogger? logger = null,
        TimeProvider? timeProvider = null)
        : this(processor, options, deadLetterProducer, logger, timeProvider, ownsDeadLetterProducer: false, hasRebalanceHandlers: false)
    {
        ArgumentNullException.ThrowIfNull(consumer);
        _consumer = consumer;
    }

    private IdempotentKafkaConsumer(
        IdempotentProcessor processor,
        KafkaIdempotencyOptions options,
        IProducer<byte[]?, byte[]?> deadLetterProducer,
        ILogger? logger,
        TimeProvider? timeProvider,
        bool ownsDeadLetterProducer,
        bool hasRebalanceHandlers)
    {
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(deadLetterProducer);
        var errors = KafkaMessageReader<TKey, TValue>.ValidationErrors(options);
        if (options.OffsetStorage == KafkaOffsetStorage.BrokerAndStore)
        {
            if (processor.Store is not IConsumerPositionStore)
            {
                errors.Add($"{nameof(KafkaIdempotencyOptions.OffsetStorage)} = {nameof(KafkaOffsetStorage.BrokerAndStore)} needs a store that implements {nameof(IConsumerPositionStore)} (PostgreSQL does); the '{processor.Store.Name}' store does not.");
            }

            if (!hasRebalanceHandlers)
            {
                errors.Add($"{nameof(KafkaIdempotencyOptions.OffsetStorage)} = {nameof(KafkaOffsetStorage.BrokerAndStore)} seeks in the wrapper's assignment handler: build the consumer with {nameof(Create)}, not around a consumer you built.");
            }
        }

        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        _processor = processor;
        _options = options;
        _deadLetterProducer = deadLetterProducer;
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _ownsDeadLetterProducer = ownsDeadLetterProducer;
        _hasRebalanceHandlers = hasRebalanceHandlers;
    }

    /// <summary>Gets the wrapped consumer. Do not consume, commit, pause or resume through it while the wrapper runs.</summary>
    public IConsumer<TKey, TValue> Consumer => _consumer;

    /// <summary>Gets the pipeline.</summary>
    public IdempotentProcessor Processor => _processor;

    /// <summary>Gets or sets the heartbeat the consume loop beats on every poll, for the consumer health check (set by the DI registration; set it before starting).</summary>
    public ConsumerHeartbeat? Heartbeat { get; set; }

    /// <inheritdoc/>
    public string Name => $"kafka:{_processor.HandlerName}";

    /// <inheritdoc/>
    public ConsumerHeartbeat? Health => Heartbeat;

    /// <inheritdoc/>
    /// <remarks>Faults with the <see cref="KafkaException"/> of a fatal consumer error, or an <see cref="InvalidOperationException"/> when a partition's worker failed unexpectedly (both after the same graceful shutdown).</remarks>
    public Task Completion => _completion;

    /// <summary>Gets or sets an observer of every final result (after retries), for tests and diagnostics.</summary>
    internal Action<ProcessingResult>? ResultObserver
    {
        get => _hooks.ResultObserver;
        set => _hooks.ResultObserver = value;
    }

    /// <summary>Gets or sets an observer of each store call's duration (messages in it, elapsed), for the benchmark.</summary>
    internal Action<int, TimeSpan>? DurationObserver
    {
        get => _hooks.DurationObserver;
        set => _hooks.DurationObserver = value;
    }

    /// <summary>Gets or sets a value indicating whether shutdown commits the completed offsets (tests turn it off to act like a crash).</summary>
    internal bool CommitOnShutdown
    {
        get => _hooks.CommitOnShutdown;
        set => _hooks.CommitOnShutdown = value;
    }

    /// <summary>
    /// Builds the consumer from <paramref name="config"/> with auto-commit and the automatic offset store turned off and
    /// the wrapper's rebalance handlers installed, plus an idempotent producer for dead-letters on the same cluster.
    /// The wrapper owns and disposes both.
    /// </summary>
    /// <param name="config">Consumer configuration (bootstrap servers, group id...). It is copied, not changed.</param>
    /// <param name="processor">The idempotency pipeline with the handler.</param>
    /// <param name="options">Kafka options; set <see cref="KafkaIdempotencyOptions.Topics"/>.</param>
    /// <param name="configure">Optional extra builder set-up (deserializers, log or error handlers; not the rebalance handlers).</param>
    /// <param name="deadLetterProducer">Optional dead-letter producer; by default one is built on the same cluster (acks=all, idempotent).</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <returns>The wrapper; start it (<see cref="StartAsync"/>, or <c>RunAsync</c>).</returns>
    /// <exception cref="ArgumentException">The options are invalid.</exception>
    public static IdempotentKafkaConsumer<TKey, TValue> Create(
        ConsumerConfig config,
        IdempotentProcessor processor,
        KafkaIdempotencyOptions options,
        Action<ConsumerBuilder<TKey, TValue>>? configure = null,
        IProducer<byte[]?, byte[]?>? deadLetterProducer = null,
        ILogger? logger = null,
        TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(options);
        if (options.OffsetStorage == KafkaOffsetStorage.BrokerAndStore && string.IsNullOrWhiteSpace(config.GroupId))
        {
            throw new ArgumentException($"{nameof(KafkaIdempotencyOptions.OffsetStorage)} = {nameof(KafkaOffsetStorage.BrokerAndStore)} keys the stored offsets by group: set {nameof(ConsumerConfig.GroupId)}.", nameof(config));
        }

        var consumerConfig = new ConsumerConfig(new Dictionary<string, string>(config, StringComparer.Ordinal))
        {
            EnableAutoCommit = false,
            EnableAutoOffsetStore = false,
        };
        var producer = deadLetterProducer ?? KafkaDeadLetterWriter.BuildProducer(config);
        try
        {
            var wrapper = new IdempotentKafkaConsumer<TKey, TValue>(processor, options, producer, logger, timeProvider, ownsDeadLetterProducer: deadLetterProducer is null, hasRebalanceHandlers: true);
            var builder = new ConsumerBuilder<TKey, TValue>(consumerConfig);
            configure?.Invoke(builder);
            if (options.OffsetStorage == KafkaOffsetStorage.BrokerAndStore)
            {
                wrapper._positionGroup = config.GroupId;
            }

            // librdkafka calls these from inside Consume, that is once the loop runs and the handling exists.
            builder.SetPartitionsAssignedHandler((_, partitions) => wrapper._rebalance?.OnAssigned(partitions) ?? partitions.Select(p => new TopicPartitionOffset(p, Offset.Unset)));
            builder.SetPartitionsRevokedHandler((_, partitions) => wrapper._rebalance?.OnRevoked(partitions.Select(p => p.TopicPartition).ToList(), lost: false));
            builder.SetPartitionsLostHandler((_, partitions) => wrapper._rebalance?.OnRevoked(partitions.Select(p => p.TopicPartition).ToList(), lost: true));
            wrapper._consumer = builder.Build();
            wrapper._ownsConsumer = true;
            return wrapper;
        }
        catch
        {
            if (deadLetterProducer is null)
            {
                producer.Dispose();
            }

            throw;
        }
    }

    /// <summary>
    /// Starts consuming: subscribes to <see cref="KafkaIdempotencyOptions.Topics"/> and runs the consume loop on its own
    /// long-running thread (<c>Consume</c> blocks, and every call on the consumer stays on that thread).
    /// </summary>
    /// <param name="cancellationToken">Cancels starting (the check of the positions table with <see cref="KafkaOffsetStorage.BrokerAndStore"/>).</param>
    /// <returns>A task that completes once the loop runs.</returns>
    /// <exception cref="InvalidOperationException">
    /// Already started; <see cref="KafkaIdempotencyOptions.Topics"/> is empty and the consumer is neither subscribed nor
    /// assigned; or the store's positions table cannot be read.
    /// </exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);

        // Without topics the loop subscribes to nothing: a consumer nobody subscribed or assigned would poll forever
        // and never receive a message. Checked before the start is taken, so the caller can fix it and start again.
        if (_options.Topics.Count == 0 && _consumer.Subscription.Count == 0 && _consumer.Assignment.Count == 0)
        {
            throw new InvalidOperationException(
                $"{nameof(KafkaIdempotencyOptions.Topics)} is empty and the consumer is neither subscribed nor assigned: add the topics to {nameof(KafkaIdempotencyOptions)}.{nameof(KafkaIdempotencyOptions.Topics)}, or subscribe (or assign) the consumer before starting.");
        }

        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("The consumer may be started once.");
        }

        var engine = new DeliveryEngine(_processor, Name, _logger, _time, Heartbeat, _options.MaxTrackedMessages, _stopping.Token, _options.Observers);
        var reader = new KafkaMessageReader<TKey, TValue>(_options, _positionGroup, _logger);
        var deadLetters = new KafkaDeadLetterWriter(_deadLetterProducer, _options, _logger, _time);
        _context = new LaneContext<TKey, TValue>(engine, _options, reader, deadLetters, new OffsetTracker(_options, _time), _hooks, _logger, _time);
        var loop = new KafkaConsumeLoop<TKey, TValue>(_consumer, _context);
        _rebalance = new RebalanceHandler<TKey, TValue>(_consumer, loop, _context, _positionGroup);
        if (!_hasRebalanceHandlers)
        {
            loop.LateRevokes = _rebalance;
        }

        _loop = loop;
        try
        {
            await CheckPositionStoreAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception)
        {
            _completion = Task.FromException(exception);
            throw;
        }

        Action? flush = _ownsDeadLetterProducer ? () => _deadLetterProducer.Flush(TimeSpan.FromSeconds(5)) : null;
        _completion = Task.Factory.StartNew(() => loop.Run(Heartbeat, _ownsConsumer, flush, _stopping.Token), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>
    /// Stops gracefully: no more fetching, in-flight messages finish within <see cref="IdempotentConsumerOptions.ShutdownTimeout"/>
    /// (then they are cancelled, which rolls them back), the settled offsets are committed and a consumer the wrapper
    /// built is closed. A fault of the loop is not thrown here: it is in <see cref="Completion"/>.
    /// </summary>
    /// <param name="cancellationToken">Cuts the drain short: in-flight work is cancelled (rolled back) at once.</param>
    /// <returns>A task that completes when the loop has stopped.</returns>
    public async Task StopAsync(CancellationToken cancellationToken = default)
    {
        _stopping.Cancel();
        using var cut = cancellationToken.Register(() => _loop?.AbortDrain());
        try
        {
            await _completion.ConfigureAwait(false);
        }
#pragma warning disable CA1031 // The loop's fault belongs to Completion; stopping itself succeeded.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (!_disposed)
        {
            await StopAsync().ConfigureAwait(false);
        }

        Dispose();
    }

    /// <summary>Stops the loop if it runs (waiting for its graceful shutdown) and disposes the clients the wrapper built.</summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _stopping.Cancel();
        try
        {
            _completion.Wait();
        }
#pragma warning disable CA1031 // The loop's fault belongs to Completion.
        catch (Exception)
#pragma warning restore CA1031
        {
        }

        _disposed = true;
        if (_ownsConsumer)
        {
            _consumer.Dispose();
        }

        if (_ownsDeadLetterProducer)
        {
            _deadLetterProducer.Dispose();
        }

        _context?.Dispose();
        _stopping.Dispose();
    }

    /// <summary>
    /// With offsets kept in the store, reads the positions table once before consuming: a table missing from the user's
    /// own migrations would otherwise fail every commit (not an outage), and every message would be dead-lettered. A store
    /// that is only down is left to the usual pause and retry.
    /// </summary>
    private async Task CheckPositionStoreAsync(CancellationToken cancellationToken)
    {
        if (_positionGroup is null || _processor.Store is not IConsumerPositionStore store)
        {
            return;
        }

        try
        {
            foreach (var topic in _options.Topics)
            {
                await store.LoadPositionsAsync(_positionGroup, topic, [0], cancellationToken).ConfigureAwait(false);
            }
        }
        catch (Exception exception) when (exception is not OperationCanceledException && !_processor.Store.IsUnavailable(exception))
        {
            throw new InvalidOperationException($"{nameof(KafkaIdempotencyOptions.OffsetStorage)} {KafkaOffsetStorage.BrokerAndStore} cannot read the store's consumer positions; is its table created (PostgreSQL: Sql/schema.sql)?", exception);
        }
    }
}
