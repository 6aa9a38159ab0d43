using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using System.Threading.Channels;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.Diagnostics;
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
/// <see cref="KafkaIdempotencyOptions.MaxConcurrentPartitions"/> partitions run at once.
/// </para>
/// <para>
/// Offsets are committed explicitly (<c>enable.auto.commit=false</c>) with <c>Commit(offsets)</c>, for each partition
/// the offset after its last completed message. Commits are lazy (every
/// <see cref="KafkaIdempotencyOptions.CommitEveryMessages"/> messages or <see cref="KafkaIdempotencyOptions.CommitInterval"/>):
/// what a crash leaves uncommitted is redelivered and skipped as a duplicate.
/// </para>
/// </remarks>
public sealed class IdempotentKafkaConsumer<TKey, TValue> : IDisposable
{
    private readonly IdempotentProcessor _processor;
    private readonly KafkaIdempotencyOptions _options;
    private readonly Func<ConsumeResult<TKey, TValue>, string?>? _keySelector;
    private readonly Func<ConsumeResult<TKey, TValue>, ReadOnlyMemory<byte>>? _bodySelector;
    private readonly IProducer<byte[]?, byte[]?> _deadLetterProducer;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly bool _ownsClients;
    private readonly bool _hasRebalanceHandlers;
    private readonly SemaphoreSlim _slots;
    private readonly Dictionary<TopicPartition, PartitionState> _partitions = [];
    private readonly Dictionary<TopicPartition, long> _highestSeen = [];
    private readonly ConcurrentQueue<PartitionState> _pauseChanges = new();
    private DeliveryEngine? _engine;
    private IConsumer<TKey, TValue> _consumer = null!;
    private long _completedSinceCommit;
    private long _lastCommitTimestamp;
    private long _nextCommitAttempt;
    private long _nextAssignmentCheck;
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
        : this(processor, options, deadLetterProducer, logger, timeProvider, ownsClients: false, hasRebalanceHandlers: false)
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
        bool ownsClients,
        bool hasRebalanceHandlers)
    {
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(deadLetterProducer);
        var errors = new List<string>(options.GetValidationErrors());
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

        var typed = options as KafkaIdempotencyOptions<TKey, TValue>;
        if (typed is null && !IsRawValueType)
        {
            errors.Add($"BodySelector is required when the value type is {typeof(TValue).Name}: use KafkaIdempotencyOptions<{typeof(TKey).Name}, {typeof(TValue).Name}>.");
        }

        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        _processor = processor;
        _options = options;
        _keySelector = typed?.KeySelector;
        _bodySelector = typed?.BodySelector;
        _deadLetterProducer = deadLetterProducer;
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _ownsClients = ownsClients;
        _hasRebalanceHandlers = hasRebalanceHandlers;
        _slots = new SemaphoreSlim(options.MaxConcurrentPartitions, options.MaxConcurrentPartitions);
    }

    /// <summary>Gets the wrapped consumer. Do not consume, commit, pause or resume through it while <see cref="RunAsync"/> runs.</summary>
    public IConsumer<TKey, TValue> Consumer => _consumer;

    /// <summary>Gets the pipeline.</summary>
    public IdempotentProcessor Processor => _processor;

    /// <summary>Gets or sets an observer of every final result (after retries), for tests and diagnostics.</summary>
    internal Action<ProcessingResult>? ResultObserver { get; set; }

    /// <summary>Gets or sets an observer of each store call's duration (messages in it, elapsed), for the benchmark.</summary>
    internal Action<int, TimeSpan>? DurationObserver { get; set; }

    /// <summary>Gets or sets a value indicating whether shutdown commits the completed offsets (tests turn it off to act like a crash).</summary>
    internal bool CommitOnShutdown { get; set; } = true;

    private static bool IsRawValueType => typeof(TValue) == typeof(byte[]) || typeof(TValue) == typeof(string) || typeof(TValue) == typeof(Ignore) || typeof(TValue) == typeof(Null);

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
    /// <returns>The wrapper; call <see cref="RunAsync"/>.</returns>
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
        var producer = deadLetterProducer ?? BuildDeadLetterProducer(config);
        try
        {
            var wrapper = new IdempotentKafkaConsumer<TKey, TValue>(processor, options, producer, logger, timeProvider, ownsClients: deadLetterProducer is null, hasRebalanceHandlers: true);
            var builder = new ConsumerBuilder<TKey, TValue>(consumerConfig);
            configure?.Invoke(builder);
            if (options.OffsetStorage == KafkaOffsetStorage.BrokerAndStore)
            {
                wrapper._positionGroup = config.GroupId;
            }

            builder.SetPartitionsAssignedHandler((_, partitions) => wrapper.OnAssigned(partitions));
            builder.SetPartitionsRevokedHandler((_, partitions) => wrapper.OnRevoked(partitions.Select(p => p.TopicPartition).ToList(), lost: false));
            builder.SetPartitionsLostHandler((_, partitions) => wrapper.OnRevoked(partitions.Select(p => p.TopicPartition).ToList(), lost: true));
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

    private bool _ownsConsumer;

    /// <summary>The group whose positions go to the store (<see cref="KafkaOffsetStorage.BrokerAndStore"/>); null when they do not.</summary>
    private string? _positionGroup;

    /// <summary>Gets or sets the heartbeat the consume loop beats on every poll, for the consumer health check (set by the DI registration).</summary>
    public Idempotency.Health.ConsumerHeartbeat? Heartbeat { get; set; }

    /// <summary>
    /// Consumes and processes until <paramref name="cancellationToken"/> is cancelled, then shuts down gracefully:
    /// stops fetching, lets in-flight messages finish within <see cref="KafkaIdempotencyOptions.ShutdownTimeout"/>
    /// (then cancels them, which rolls them back), and commits the offsets of what completed.
    /// </summary>
    /// <param name="cancellationToken">Stops the loop.</param>
    /// <returns>A task that completes after shutdown.</returns>
    /// <exception cref="InvalidOperationException">Already started.</exception>
    /// <exception cref="KafkaException">A fatal consumer error stopped the loop (after the same graceful shutdown).</exception>
    public Task RunAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("RunAsync may be called once.");
        }

        return RunCheckedAsync(cancellationToken);
    }

    private async Task RunCheckedAsync(CancellationToken cancellationToken)
    {
        _engine = new DeliveryEngine(_processor, $"kafka:{_processor.HandlerName}", _logger, _time, Heartbeat, stopping: cancellationToken);
        await CheckPositionStoreAsync(cancellationToken).ConfigureAwait(false);

        // Consume blocks, and every consumer call stays on this one thread.
        await Task.Factory.StartNew(() => RunLoop(cancellationToken), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).ConfigureAwait(false);
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

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        if (_ownsConsumer)
        {
            _consumer.Dispose();
        }

        if (_ownsClients)
        {
            _deadLetterProducer.Dispose();
        }

        _slots.Dispose();
    }

    private static IProducer<byte[]?, byte[]?> BuildDeadLetterProducer(ConsumerConfig config)
    {
        var producerConfig = new ProducerConfig { Acks = Acks.All, EnableIdempotence = true, LingerMs = 1 };
        foreach (var (key, value) in config)
        {
            // Connection and security settings only; consumer settings would draw warnings from librdkafka.
            if (key is "bootstrap.servers" or "client.id" or "security.protocol" || key.StartsWith("sasl.", StringComparison.Ordinal) || key.StartsWith("ssl.", StringComparison.Ordinal))
            {
                producerConfig.Set(key, value);
            }
        }

        return new ProducerBuilder<byte[]?, byte[]?>(producerConfig).Build();
    }

    private void RunLoop(CancellationToken cancellationToken)
    {
        Exception? fatal = null;
        _lastCommitTimestamp = _time.GetTimestamp();
        try
        {
            if (_options.Topics.Count > 0)
            {
                _consumer.Subscribe(_options.Topics);
            }

            while (!cancellationToken.IsCancellationRequested)
            {
                if (Heartbeat is { } heartbeat)
                {
                    // The state is the store gate's to set (running, paused, misconfigured); the loop only shows it is alive.
                    heartbeat.Beat();
                }

                ApplyPauseChanges();
                if (FailedWorker() is { } failed)
                {
                    fatal = failed;
                    break;
                }

                MaybeCommit(force: false);
                ConsumeResult<TKey, TValue>? result;
                try
                {
                    result = _consumer.Consume(_options.PollTimeout);
                }
                catch (ConsumeException e) when (!e.Error.IsFatal)
                {
                    // Only a deserialization failure carries a real message. Other consume errors (a fetch that
                    // failed or timed out) also come with a record, but its offset is just the fetch position and its
                    // value the error text: dead-lettering it would commit past a message nobody processed.
                    if (e.Error.Code is ErrorCode.Local_KeyDeserialization or ErrorCode.Local_ValueDeserialization
                        && e.ConsumerRecord is { } raw && raw.Message is not null)
                    {
                        // A message that cannot be deserialized: it keeps its place in its partition and is dead-lettered there.
                        Enqueue(raw.TopicPartition, new Work(null, raw, e));
                    }
                    else
                    {
                        Log.ConsumeError(_logger, e.ConsumerRecord?.TopicPartition?.ToString() ?? "-", e.Error.Reason);
                    }

                    continue;
                }

                if (!_hasRebalanceHandlers)
                {
                    CheckAssignment();
                }

                if (result is null || result.IsPartitionEOF || result.Message is null)
                {
                    continue;
                }

                Enqueue(result.TopicPartition, new Work(result, null, null));
            }
        }
        catch (KafkaException e) when (e.Error.IsFatal)
        {
            Log.Fatal(_logger, e);
            fatal = e;
        }

        // Graceful shutdown: no more fetching; in-flight work finishes or is cancelled; what completed is committed.
        var all = _partitions.Values.ToList();
        StopWorkers(all, _options.ShutdownTimeout);
        var committed = CommitOnShutdown && fatal is null && Commit(all);
        _partitions.Clear();
        if (_ownsConsumer)
        {
            try
            {
                _consumer.Close();
            }
            catch (KafkaException e)
            {
                Log.ConsumeError(_logger, "close", e.Error.Reason);
            }
        }

        if (_ownsClients)
        {
            _deadLetterProducer.Flush(TimeSpan.FromSeconds(5));
        }

        if (Heartbeat is not null)
        {
            Heartbeat.State = Idempotency.Health.ConsumerState.Stopped;
        }

        Log.Stopped(_logger, committed);
        if (fatal is not null)
        {
            throw fatal;
        }
    }

    /// <summary>
    /// A partition worker that died of an unexpected exception (a bug, not a handler or store failure, which the worker
    /// handles) would leave its partition stalled with nobody noticing: the loop stops and RunAsync fails with it.
    /// </summary>
    private Exception? FailedWorker()
    {
        foreach (var state in _partitions.Values)
        {
            if (state.Worker.IsFaulted)
            {
                var exception = state.Worker.Exception!.GetBaseException();
                Log.WorkerFailed(_logger, exception, state.Name);
                return new InvalidOperationException($"The worker of {state.Name} failed: {exception.Message}", exception);
            }
        }

        return null;
    }

    private void Enqueue(TopicPartition partition, Work work)
    {
        if (!_partitions.TryGetValue(partition, out var state))
        {
            state = StartPartition(partition);
        }

        var offset = work.Offset;
        if (_highestSeen.TryGetValue(partition, out var highest) && offset <= highest)
        {
            // Seen before in this process: only a rebalance (or a revoke that dropped queued work) makes Kafka hand it out again.
            work = work with { Reread = true };
            IdempotencyMetrics.RecordRedelivered("kafka", _processor.HandlerName, partition.Topic);
        }
        else
        {
            _highestSeen[partition] = offset;
        }

        state.Queue.Writer.TryWrite(work);
        if (Interlocked.Increment(ref state.Buffered) >= _options.MaxBufferedMessagesPerPartition && !state.BackpressurePaused)
        {
            state.BackpressurePaused = true;
            UpdatePause(state);
        }
    }

    private PartitionState StartPartition(TopicPartition partition)
    {
        // librdkafka keeps an application's pause across an eager revoke and re-assign: a partition this consumer paused
        // before (backpressure, store outage) would come back paused and never be read again. Assume it is paused at the
        // broker, so the loop resumes it once the assignment is in place.
        var state = new PartitionState(partition) { PausedAtBroker = true };
        state.Port = new PartitionPort(this, state);
        _partitions[partition] = state;
        UpdatePause(state);
        state.Worker = Task.Run(() => RunWorkerAsync(state));
        return state;
    }

    private IEnumerable<TopicPartitionOffset> OnAssigned(List<TopicPartition> partitions)
    {
        Log.Assigned(_logger, string.Join(", ", partitions));
        foreach (var partition in partitions)
        {
            if (!_partitions.ContainsKey(partition))
            {
                StartPartition(partition);
            }
        }

        return _positionGroup is null
            ? partitions.Select(p => new TopicPartitionOffset(p, Offset.Unset))
            : StartOffsetsFromStore(partitions, _positionGroup);
    }

    /// <summary>
    /// For each partition, the offset after the store's position when it is ahead of the group's committed offset (the
    /// broker lost or never got a commit); otherwise <see cref="Offset.Unset"/>: the committed offset, which may be ahead
    /// of the store after dead-letters or duplicates, whose offsets only Kafka records.
    /// </summary>
    private List<TopicPartitionOffset> StartOffsetsFromStore(List<TopicPartition> partitions, string group)
    {
        var starts = partitions.Select(p => new TopicPartitionOffset(p, Offset.Unset)).ToList();
        try
        {
            // Runs on the consume thread inside the rebalance: bounded, well under max.poll.interval.ms.
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            var store = (IConsumerPositionStore)_processor.Store;
            var stored = new Dictionary<TopicPartition, long>();
            foreach (var topic in partitions.GroupBy(p => p.Topic))
            {
                var positions = store.LoadPositionsAsync(group, topic.Key, topic.Select(p => p.Partition.Value).ToList(), timeout.Token).AsTask().GetAwaiter().GetResult();
                foreach (var (partition, offset) in positions)
                {
                    stored[new TopicPartition(topic.Key, partition)] = offset;
                }
            }

            if (stored.Count == 0)
            {
                return starts;
            }

            var committed = _consumer.Committed(stored.Keys, TimeSpan.FromSeconds(10)).ToDictionary(c => c.TopicPartition, c => c.Offset.Value);
            for (var i = 0; i < starts.Count; i++)
            {
                var partition = starts[i].TopicPartition;
                if (stored.TryGetValue(partition, out var last))
                {
                    var brokerNext = committed.GetValueOrDefault(partition, Offset.Unset.Value);
                    if (last + 1 > brokerNext)
                    {
                        starts[i] = new TopicPartitionOffset(partition, last + 1);
                        Log.SeekToStoredPosition(_logger, partition.ToString(), last + 1, brokerNext);
                    }
                }
            }
        }
#pragma warning disable CA1031 // Stored offsets save re-reads; without them the committed offsets are still correct (re-reads are duplicates).
        catch (Exception e)
#pragma warning restore CA1031
        {
            Log.StoredPositionsUnavailable(_logger, e, string.Join(", ", partitions));
            return partitions.Select(p => new TopicPartitionOffset(p, Offset.Unset)).ToList();
        }

        return starts;
    }

    private void OnRevoked(List<TopicPartition> partitions, bool lost)
    {
        var states = partitions.Select(p => _partitions.GetValueOrDefault(p)).OfType<PartitionState>().ToList();
        if (lost)
        {
            // Another member may own them already: cancel everything in flight (it rolls back) and commit nothing.
            foreach (var state in states)
            {
                state.StopTaking.Cancel();
                state.Abort.Cancel();
            }

            StopWorkers(states, TimeSpan.Zero);
            Log.Lost(_logger, string.Join(", ", partitions));
        }
        else
        {
            StopWorkers(states, _options.RevokeTimeout);
            Commit(states);
            Log.Revoked(_logger, string.Join(", ", partitions));
        }

        foreach (var state in states)
        {
            _partitions.Remove(state.Partition);
            state.Dispose();
        }
    }

    private void CheckAssignment()
    {
        // Without our rebalance handlers a revoke is seen only afterwards, from the assignment.
        var now = _time.GetTimestamp();
        if (now < _nextAssignmentCheck || _partitions.Count == 0)
        {
            return;
        }

        _nextAssignmentCheck = now + (long)(0.25 * TimeProvider.System.TimestampFrequency);
        var assigned = _consumer.Assignment.ToHashSet();
        var gone = _partitions.Keys.Where(p => !assigned.Contains(p)).ToList();
        if (gone.Count > 0)
        {
            OnRevoked(gone, lost: false);
        }
    }

    private void StopWorkers(List<PartitionState> states, TimeSpan timeout)
    {
        if (states.Count == 0)
        {
            return;
        }

        foreach (var state in states)
        {
            state.StopTaking.Cancel();
            state.Queue.Writer.TryComplete();
        }

        var workers = states.Select(s => s.Worker).ToArray();
        if (!WaitAll(workers, timeout))
        {
            Log.InFlightCancelled(_logger, workers.Count(w => !w.IsCompleted), timeout);
            foreach (var state in states)
            {
                state.Abort.Cancel();
            }

            // Cancelled work rolls back; the commit of a transaction already sent is awaited by the pipeline.
            WaitAll(workers, TimeSpan.FromSeconds(30));
        }
    }

    /// <summary>Waits for the workers; a faulted one is reported by <see cref="FailedWorker"/>, not thrown here (inside a rebalance callback).</summary>
    private static bool WaitAll(Task[] workers, TimeSpan timeout)
    {
        try
        {
            return Task.WaitAll(workers, timeout);
        }
        catch (AggregateException)
        {
            // Thrown only once every worker has finished, some of them faulted.
            return true;
        }
    }

    private void MaybeCommit(bool force)
    {
        var now = _time.GetTimestamp();
        var pending = Interlocked.Read(ref _completedSinceCommit);
        if (!force && (pending == 0 || now < _nextCommitAttempt ||
            (pending < _options.CommitEveryMessages && _time.GetElapsedTime(_lastCommitTimestamp, now) < _options.CommitInterval)))
        {
            return;
        }

        if (Commit(_partitions.Values))
        {
            Interlocked.Add(ref _completedSinceCommit, -pending);
            _lastCommitTimestamp = now;
        }
        else
        {
            _nextCommitAttempt = now + (long)(0.2 * TimeProvider.System.TimestampFrequency);
        }
    }

    /// <summary>Commits, for each partition, the offset after its last completed message. Runs on the loop thread.</summary>
    private bool Commit(IEnumerable<PartitionState> states)
    {
        List<TopicPartitionOffset>? offsets = null;
        foreach (var state in states)
        {
            var next = Volatile.Read(ref state.CompletedNext);
            if (next > state.CommittedNext)
            {
                (offsets ??= []).Add(new TopicPartitionOffset(state.Partition, next));
            }
        }

        if (offsets is null)
        {
            return true;
        }

        try
        {
            _consumer.Commit(offsets);
            foreach (var offset in offsets)
            {
                if (_partitions.TryGetValue(offset.TopicPartition, out var state))
                {
                    state.CommittedNext = Math.Max(state.CommittedNext, offset.Offset.Value);
                }
            }

            return true;
        }
        catch (KafkaException e)
        {
            // Nothing is lost: the next commit carries later offsets, and what a failed commit leaves behind is redelivered as duplicates.
            Log.CommitFailed(_logger, e, e.Error.Code);
            return false;
        }
    }

    private void UpdatePause(PartitionState state)
    {
        _pauseChanges.Enqueue(state);
    }

    private void ApplyPauseChanges()
    {
        while (_pauseChanges.TryDequeue(out var state))
        {
            if (!_partitions.TryGetValue(state.Partition, out var current) || !ReferenceEquals(current, state))
            {
                continue;
            }

            var wanted = state.BackpressurePaused || state.StorePaused;
            if (wanted == state.PausedAtBroker)
            {
                continue;
            }

            try
            {
                if (wanted)
                {
                    _consumer.Pause([state.Partition]);
                }
                else
                {
                    _consumer.Resume([state.Partition]);
                }

                state.PausedAtBroker = wanted;
            }
            catch (KafkaException e)
            {
                Log.ConsumeError(_logger, state.Partition.ToString(), e.Error.Reason);
            }
        }
    }

    private async Task RunWorkerAsync(PartitionState state)
    {
        var reader = state.Queue.Reader;
        var batch = new List<Work>(_options.BatchSize);
        try
        {
            while (await reader.WaitToReadAsync(state.StopTaking.Token).ConfigureAwait(false))
            {
                batch.Clear();
                if (_options.BatchSize == 1 && Volatile.Read(ref state.Buffered) > 1 && _processor.DuplicatesLikely)
                {
                    while (batch.Count < LookAheadMessages && reader.TryRead(out var queued))
                    {
                        batch.Add(queued);
                    }

                    if (!await HandleLookedUpAsync(state, batch).ConfigureAwait(false))
                    {
                        return;
                    }

                    continue;
                }

                await FillBatchAsync(state, batch).ConfigureAwait(false);
                if (batch.Count == 0)
                {
                    continue;
                }

                // A batch marks its settled prefix completed itself, so the position can move up to a failing message
                // while that one still retries or waits for its dead-letter.
                if (batch.Count > 1)
                {
                    if (!await HandleBatchAsync(state, batch).ConfigureAwait(false))
                    {
                        return;
                    }

                    continue;
                }

                if (!await HandleOneAsync(state, batch[0], firstAttempt: 1).ConfigureAwait(false))
                {
                    return;
                }

                MarkCompleted(state, batch[0].Offset, 1);
            }
        }
        catch (OperationCanceledException) when (state.StopTaking.IsCancellationRequested || state.Abort.IsCancellationRequested)
        {
            // Stopped (revoke, loss or shutdown): what did not complete is redelivered to whoever owns the partition next.
        }
    }

    /// <summary>How many queued messages of a partition one look-up checks while duplicates are frequent.</summary>
    private const int LookAheadMessages = 100;

    /// <summary>Records that a partition's messages up to <paramref name="lastOffset"/> settled, and lifts backpressure.</summary>
    private void MarkCompleted(PartitionState state, long lastOffset, int count)
    {
        Volatile.Write(ref state.CompletedNext, lastOffset + 1);
        Interlocked.Add(ref _completedSinceCommit, count);
        if (Interlocked.Add(ref state.Buffered, -count) <= _options.MaxBufferedMessagesPerPartition / 2 && state.BackpressurePaused)
        {
            state.BackpressurePaused = false;
            UpdatePause(state);
        }
    }

    /// <summary>
    /// Per-message mode while duplicates are frequent (a replay, a group re-reading a topic): the keys of the queued
    /// messages are looked up in one round trip, duplicates settle without a transaction, and the others are processed
    /// one by one, in order, as usual. False when the partition stopped first.
    /// </summary>
    private async ValueTask<bool> HandleLookedUpAsync(PartitionState state, List<Work> queued)
    {
        // Built once, marked looked up: a message the look-up does not settle goes on to processing as it is.
        var readable = new List<IncomingMessage>(queued.Count);
        foreach (var work in queued)
        {
            if (work.Error is null)
            {
                readable.Add(ToIncoming(work, attempt: 1, keyLookedUp: true));
            }
        }

        var found = await InSlotAsync(state, static (processor, messages, ct) => processor.LookUpProcessedAsync(messages, ct), readable, static found => found.Count(r => r is not null)).ConfigureAwait(false);
        var next = 0;
        foreach (var work in queued)
        {
            var message = work.Error is null ? readable[next] : null;
            var known = work.Error is null ? found[next++] : null;

            // A looked-up duplicate is acknowledged, or dead-lettered or retried by the payload-mismatch policy. A retry has
            // not settled the message: it goes on to processing like any other, its look-up counted as the first attempt.
            bool done;
            if (known is null)
            {
                done = await HandleOneAsync(state, work, firstAttempt: 1, message).ConfigureAwait(false);
            }
            else
            {
                var settled = await _engine!.SettleAsync(state.Port, work, known, attempt: 1, state.StopTaking.Token).ConfigureAwait(false);
                done = settled.Outcome == SettleOutcome.Settled || await HandleOneAsync(state, work, firstAttempt: settled.AttemptSpent ? 2 : 1).ConfigureAwait(false);
            }
            if (!done)
            {
                return false;
            }

            MarkCompleted(state, work.Offset, 1);
        }

        return true;
    }

    /// <summary>
    /// Runs one pipeline call in a concurrency slot (the wait for one ends when the partition stops taking work), cancelled
    /// by the partition's abort; reports its duration and how many messages it covered.
    /// </summary>
    private async ValueTask<TResult> InSlotAsync<TArgument, TResult>(PartitionState state, Func<IdempotentProcessor, TArgument, CancellationToken, ValueTask<TResult>> call, TArgument argument, Func<TResult, int> messages)
    {
        await _slots.WaitAsync(state.StopTaking.Token).ConfigureAwait(false);
        var started = _time.GetTimestamp();
        TResult result;
        try
        {
            result = await call(_processor, argument, state.Abort.Token).ConfigureAwait(false);
        }
        finally
        {
            _slots.Release();
        }

        DurationObserver?.Invoke(messages(result), _time.GetElapsedTime(started));
        return result;
    }

    private async ValueTask FillBatchAsync(PartitionState state, List<Work> batch)
    {
        var reader = state.Queue.Reader;
        while (batch.Count < _options.BatchSize && reader.TryRead(out var work))
        {
            batch.Add(work);
        }

        if (batch.Count == 0 || batch.Count >= _options.BatchSize || _options.BatchMaxWait <= TimeSpan.Zero)
        {
            return;
        }

        using var wait = CancellationTokenSource.CreateLinkedTokenSource(state.StopTaking.Token);
        wait.CancelAfter(_options.BatchMaxWait);
        try
        {
            while (batch.Count < _options.BatchSize && await reader.WaitToReadAsync(wait.Token).ConfigureAwait(false))
            {
                while (batch.Count < _options.BatchSize && reader.TryRead(out var work))
                {
                    batch.Add(work);
                }
            }
        }
        catch (OperationCanceledException) when (!state.StopTaking.IsCancellationRequested)
        {
            // The batch's time is up.
        }
    }

    /// <summary>Processes one message until it is committed or dead-lettered; false when the partition stopped first.</summary>
    /// <param name="state">The partition.</param>
    /// <param name="work">The message.</param>
    /// <param name="firstAttempt">The attempt to start counting from.</param>
    /// <param name="lookedUp">The message as <see cref="HandleLookedUpAsync"/> built and looked it up without finding its key, for the first try.</param>
    private async ValueTask<bool> HandleOneAsync(PartitionState state, Work work, int firstAttempt, IncomingMessage? lookedUp = null)
    {
        if (work.Error is not null)
        {
            return await DeadLetterUnreadableAsync(state, work).ConfigureAwait(false);
        }

        var attempt = firstAttempt;
        var message = lookedUp ?? ToIncoming(work, attempt);
        while (true)
        {
            var result = await InSlotAsync(state, static (processor, message, ct) => processor.ProcessAsync(message, ct), message, static _ => 1).ConfigureAwait(false);
            var settled = await _engine!.SettleAsync(state.Port, work, result, attempt, state.StopTaking.Token).ConfigureAwait(false);
            if (settled.Outcome == SettleOutcome.Settled)
            {
                return true;
            }

            // Processed again in place (a partition is a log): the next try is the next attempt only if the handler failed.
            if (settled.AttemptSpent)
            {
                attempt++;
            }

            message = ToIncoming(work, attempt);
        }
    }

    /// <summary>Processes a batch in one store transaction; messages that did not commit are then settled one by one, in order.</summary>
    private async ValueTask<bool> HandleBatchAsync(PartitionState state, List<Work> batch)
    {
        var pending = new List<Work>(batch.Count);
        long? firstUnreadable = null;
        foreach (var work in batch)
        {
            if (work.Error is null)
            {
                pending.Add(work);
            }
            else
            {
                firstUnreadable ??= work.Offset;
            }
        }

        var failed = new List<(Work Work, ProcessingResult Result)>();
        while (pending.Count > 0)
        {
            // The settled prefix: an unreadable message (dead-lettered after this batch) or one that failed in an earlier
            // round (retried after it) has not settled, so no stored position may pass it, in this round or any later one.
            var firstUnsettled = firstUnreadable ?? long.MaxValue;
            foreach (var (work, _) in failed)
            {
                firstUnsettled = Math.Min(firstUnsettled, work.Offset);
            }

            var messages = new IncomingMessage[pending.Count];
            for (var i = 0; i < messages.Length; i++)
            {
                messages[i] = ToIncoming(pending[i], 1, withPosition: pending[i].Offset < firstUnsettled);
            }

            var results = await InSlotAsync(state, static (processor, messages, ct) => processor.ProcessBatchAsync(messages, ct), messages, static results => results.Count).ConfigureAwait(false);

            ProcessingResult? storeDown = null;
            var next = new List<Work>();
            for (var i = 0; i < results.Count; i++)
            {
                var result = results[i];
                if (result.IsCommitted)
                {
                    ResultObserver?.Invoke(result);
                }
                else if (result.Outcome is ProcessingOutcome.StoreUnavailable or ProcessingOutcome.StoreMisconfigured)
                {
                    storeDown ??= result;
                    next.Add(pending[i]);
                }
                else
                {
                    failed.Add((pending[i], result));
                }
            }

            pending = next;
            if (storeDown is not null)
            {
                _engine!.Gate.Close(storeDown);
                await _engine.WaitForStoreAsync(state.Port, state.StopTaking.Token).ConfigureAwait(false);
            }
        }

        ResumeAfterStore(state);

        // The rest of the batch committed; each failure (and unreadable message) now gets its retries or its dead-letter, in offset order.
        failed.Sort((a, b) => a.Work.Offset.CompareTo(b.Work.Offset));
        var unreadable = batch.Where(w => w.Error is not null);
        var marked = 0;
        foreach (var work in failed.Select(f => f.Work).Concat(unreadable).OrderBy(w => w.Offset))
        {
            // Everything before this unsettled message has settled (committed, or an earlier failure settled above).
            marked = MarkSettledBefore(state, batch, marked, work.Offset);
            var first = failed.FindIndex(f => f.Work.Offset == work.Offset);
            if (first >= 0)
            {
                // The batch's result is this message's first attempt; the engine settles it or waits before the next.
                var settled = await _engine!.SettleAsync(state.Port, work, failed[first].Result, attempt: 1, state.StopTaking.Token).ConfigureAwait(false);
                if (settled.Outcome == SettleOutcome.Settled)
                {
                    continue;
                }

                if (!await HandleOneAsync(state, work, firstAttempt: settled.AttemptSpent ? 2 : 1).ConfigureAwait(false))
                {
                    return false;
                }

                continue;
            }

            if (!await HandleOneAsync(state, work, firstAttempt: 1).ConfigureAwait(false))
            {
                return false;
            }
        }

        MarkSettledBefore(state, batch, marked, long.MaxValue);
        return true;
    }

    /// <summary>Marks completed the batch's messages after the first <paramref name="marked"/> and before <paramref name="offset"/>; returns how many are marked now.</summary>
    private int MarkSettledBefore(PartitionState state, List<Work> batch, int marked, long offset)
    {
        var end = marked;
        while (end < batch.Count && batch[end].Offset < offset)
        {
            end++;
        }

        if (end > marked)
        {
            MarkCompleted(state, batch[end - 1].Offset, end - marked);
        }

        return end;
    }

    private void ResumeAfterStore(PartitionState state)
    {
        if (state.StorePaused)
        {
            state.StorePaused = false;
            UpdatePause(state);
            Log.ResumedAfterStore(_logger, state.Name);
        }
    }

    private async ValueTask<bool> DeadLetterAsync(PartitionState state, Work work, ProcessingResult result, DeliveryDecision decision, int attempts)
    {
        var headers = DeadLetterHeaders.Create(result, decision, _processor.HandlerName, attempts);
        var record = work.Result!;
        return await ProduceDeadLetterAsync(state, work, KeyBytes(record.Message.Key), result.Message.Body.ToArray(), record.Message.Headers, headers, decision.ReasonCode ?? "unknown", attempts).ConfigureAwait(false);
    }

    private async ValueTask<bool> DeadLetterUnreadableAsync(PartitionState state, Work work)
    {
        var raw = work.Raw!;
        var error = (ConsumeException)work.Error!;
        var headers = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [DeadLetterHeaders.ReasonCode] = KafkaDeadLetterHeaders.DeserializationFailed,
            [DeadLetterHeaders.ErrorType] = error.InnerException?.GetType().FullName ?? error.GetType().FullName!,
            [DeadLetterHeaders.ErrorMessage] = error.Error.Reason,
            [DeadLetterHeaders.Attempts] = "1",
            [DeadLetterHeaders.Handler] = _processor.HandlerName,
        };

        // Unreadable messages never reach the engine, which counts every other dead-letter.
        var sent = await ProduceDeadLetterAsync(state, work, raw.Message.Key, raw.Message.Value, raw.Message.Headers, headers, KafkaDeadLetterHeaders.DeserializationFailed, 1).ConfigureAwait(false);
        if (sent)
        {
            IdempotencyMetrics.RecordDeadLettered("kafka", _processor.HandlerName, state.Partition.Topic, KafkaDeadLetterHeaders.DeserializationFailed);
        }

        return sent;
    }

    private async ValueTask<bool> ProduceDeadLetterAsync(PartitionState state, Work work, byte[]? key, byte[]? value, Headers? original, Dictionary<string, string> extra, string reasonCode, int attempts)
    {
        var topic = _options.GetDeadLetterTopic(state.Partition.Topic);
        var headers = new Headers();
        if (original is not null)
        {
            foreach (var header in original)
            {
                headers.Add(header.Key, header.GetValueBytes());
            }
        }

        foreach (var (name, text) in extra)
        {
            headers.Add(name, Encoding.UTF8.GetBytes(text));
        }

        headers.Add(KafkaDeadLetterHeaders.OriginalTopic, Encoding.UTF8.GetBytes(state.Partition.Topic));
        headers.Add(KafkaDeadLetterHeaders.OriginalPartition, Encoding.UTF8.GetBytes(state.Partition.Partition.Value.ToString(CultureInfo.InvariantCulture)));
        headers.Add(KafkaDeadLetterHeaders.OriginalOffset, Encoding.UTF8.GetBytes(work.Offset.ToString(CultureInfo.InvariantCulture)));
        if (work.Timestamp is { Type: not TimestampType.NotAvailable } timestamp)
        {
            headers.Add(KafkaDeadLetterHeaders.OriginalTimestamp, Encoding.UTF8.GetBytes(timestamp.UnixTimestampMs.ToString(CultureInfo.InvariantCulture)));
        }

        var message = new Message<byte[]?, byte[]?> { Key = key, Value = value, Headers = headers };
        var failures = 0;
        while (true)
        {
            try
            {
                // The source offset may move past this message only once the dead-letter topic acknowledged it.
                await _deadLetterProducer.ProduceAsync(topic, message, state.StopTaking.Token).ConfigureAwait(false);
                Log.DeadLettered(_logger, state.Name, work.Offset, topic, reasonCode, attempts);
                return true;
            }
            catch (ProduceException<byte[]?, byte[]?> e)
            {
                failures++;
                Log.DeadLetterFailed(_logger, e, topic);
                await Task.Delay(_options.DeadLetterProduceBackoff.GetDelay(failures), _time, state.StopTaking.Token).ConfigureAwait(false);
            }
        }
    }

    private IncomingMessage ToIncoming(Work work, int attempt, bool withPosition = true, bool keyLookedUp = false)
    {
        var record = work.Result!;
        return new IncomingMessage(SelectKey(record, out var keyError), SelectBody(record))
        {
            KeyError = keyError,
            Broker = "kafka",
            Destination = record.Topic,
            Headers = TraceHeaders(record.Message.Headers),
            Timestamp = record.Message.Timestamp.Type == TimestampType.NotAvailable ? null : new DateTimeOffset(record.Message.Timestamp.UtcDateTime),
            Redelivered = work.Reread || attempt > 1,
            RedeliveryCause = work.Reread ? "rebalance" : attempt > 1 ? "redelivery" : null,
            DeliveryAttempt = attempt,
            KeyLookedUp = keyLookedUp,
            Native = record,
            Position = _positionGroup is null || !withPosition ? null : new ConsumerPosition(_positionGroup, record.Topic, record.Partition.Value, record.Offset.Value),
        };
    }

    private string? SelectKey(ConsumeResult<TKey, TValue> record, out string? keyError)
    {
        keyError = null;
        if (_keySelector is null)
        {
            if (record.Message.Headers is not { } headers || !headers.TryGetLastBytes(_options.KeyHeader, out var bytes) || bytes is null)
            {
                return null;
            }

            return IdempotencyKey.TryDecode(bytes, _options.KeyBytesEncoding, out var key, out keyError) ? key : null;
        }

        try
        {
            return _keySelector(record);
        }
#pragma warning disable CA1031 // A selector that throws is a message without a key; its policy decides.
        catch (Exception e)
#pragma warning restore CA1031
        {
            Log.KeySelectorFailed(_logger, e, record.TopicPartition.ToString(), record.Offset.Value);
            return null;
        }
    }

    private ReadOnlyMemory<byte> SelectBody(ConsumeResult<TKey, TValue> record)
    {
        if (_bodySelector is not null)
        {
            return _bodySelector(record);
        }

        return record.Message.Value switch
        {
            byte[] bytes => bytes,
            string text => Encoding.UTF8.GetBytes(text),
            _ => ReadOnlyMemory<byte>.Empty,
        };
    }

    private static byte[]? KeyBytes(TKey key) => key switch
    {
        byte[] bytes => bytes,
        string text => Encoding.UTF8.GetBytes(text),
        _ => null,
    };

    private static Dictionary<string, string>? TraceHeaders(Headers? headers)
    {
        if (headers is null || headers.Count == 0 || !headers.TryGetLastBytes("traceparent", out var parent))
        {
            return null;
        }

        var result = new Dictionary<string, string>(StringComparer.Ordinal) { ["traceparent"] = Encoding.UTF8.GetString(parent) };
        if (headers.TryGetLastBytes("tracestate", out var state))
        {
            result["tracestate"] = Encoding.UTF8.GetString(state);
        }

        return result;
    }

    private readonly record struct Work(ConsumeResult<TKey, TValue>? Result, ConsumeResult<byte[], byte[]>? Raw, Exception? Error)
    {
        public bool Reread { get; init; }

        public long Offset => Result?.Offset.Value ?? Raw!.Offset.Value;

        public Timestamp? Timestamp => Result?.Message.Timestamp ?? Raw?.Message.Timestamp;
    }

    /// <summary>
    /// Kafka's ack model for the engine, for one partition: a partition is a log, so a message is retried in place and
    /// settling it only lets the partition's position move on (the worker marks it completed); dead-letters go to the
    /// dead-letter topic; intake pauses the partition at the broker.
    /// </summary>
    private sealed class PartitionPort(IdempotentKafkaConsumer<TKey, TValue> consumer, PartitionState state) : IDeliveryPort<Work>
    {
        public bool RetriesInPlace => true;

        public string Broker => "kafka";

        public string Destination => state.Partition.Topic;

        public string AttemptId(Work delivery) => string.Create(CultureInfo.InvariantCulture, $"{state.Name}@{delivery.Offset}");

        public ValueTask AcknowledgeAsync(Work delivery, ProcessingResult result, CancellationToken cancellationToken)
        {
            consumer.ResumeAfterStore(state);
            consumer.ResultObserver?.Invoke(result);
            return ValueTask.CompletedTask;
        }

        public async ValueTask<bool> DeadLetterAsync(Work delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
        {
            consumer.ResumeAfterStore(state);
            consumer.ResultObserver?.Invoke(result);

            // False only when the partition stopped first: the engine's wait then ends with the stop.
            return await consumer.DeadLetterAsync(state, delivery, result, decision, attempts).ConfigureAwait(false);
        }

        public ValueTask ReturnAsync(Work delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("A Kafka partition retries in place; nothing is returned to the broker.");

        public void PauseIntake()
        {
            if (!state.StorePaused)
            {
                state.StorePaused = true;
                consumer.UpdatePause(state);
                Log.PausedForStore(consumer._logger, state.Name);
            }
        }

        public void ResumeIntake() => consumer.ResumeAfterStore(state);
    }

    private sealed class PartitionState(TopicPartition partition) : IDisposable
    {
        public PartitionPort Port { get; set; } = null!;

        public int Buffered;
        public long CompletedNext = -1;

        public TopicPartition Partition { get; } = partition;

        public string Name { get; } = partition.ToString();

        public Channel<Work> Queue { get; } = Channel.CreateUnbounded<Work>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });

        /// <summary>Stops taking queued messages and ends waits (retry backoff, store outage).</summary>
        public CancellationTokenSource StopTaking { get; } = new();

        /// <summary>Cancels the store transaction in flight (it rolls back).</summary>
        public CancellationTokenSource Abort { get; } = new();

        public Task Worker { get; set; } = Task.CompletedTask;

        public long CommittedNext { get; set; } = -1;

        public volatile bool BackpressurePaused;

        public volatile bool StorePaused;

        public bool PausedAtBroker { get; set; }

        public void Dispose()
        {
            StopTaking.Dispose();
            Abort.Dispose();
        }
    }
}
