using System.Threading.Channels;
using Confluent.Kafka;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// One assigned partition: the queue of its fetched messages, the worker that processes them strictly in offset order,
/// its settled prefix, and why it is paused at the broker (backpressure, a store outage).
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <remarks>
/// The consume loop enqueues and applies pauses on its thread; the worker settles messages and asks for pause changes,
/// which the loop carries out (every consumer call stays on the loop's thread).
/// </remarks>
internal sealed class PartitionLane<TKey, TValue> : IDisposable
{
    private readonly LaneContext<TKey, TValue> _context;
    private readonly Action<PartitionLane<TKey, TValue>> _pauseChanged;
    private int _buffered;
    private volatile bool _backpressurePaused;
    private volatile bool _storePaused;

    /// <summary>Creates the lane; <see cref="Start"/> starts its worker.</summary>
    /// <param name="partition">The partition.</param>
    /// <param name="context">What the consumer's lanes share.</param>
    /// <param name="pauseChanged">Asks the consume loop to pause or resume the partition at the broker as <see cref="WantsPause"/> says.</param>
    public PartitionLane(TopicPartition partition, LaneContext<TKey, TValue> context, Action<PartitionLane<TKey, TValue>> pauseChanged)
    {
        Partition = partition;
        Name = partition.ToString();
        _context = context;
        _pauseChanged = pauseChanged;
        Port = new PartitionPort<TKey, TValue>(this, context);
    }

    /// <summary>Gets the partition.</summary>
    public TopicPartition Partition { get; }

    /// <summary>Gets the partition's name for logs (<c>topic [[p]]</c>).</summary>
    public string Name { get; }

    /// <summary>Gets the lane's port: how the engine's decisions become Kafka actions.</summary>
    public PartitionPort<TKey, TValue> Port { get; }

    /// <summary>Gets the partition's settled prefix.</summary>
    public PartitionOffsets Offsets { get; } = new();

    /// <summary>Gets the fetched messages waiting for the worker.</summary>
    public Channel<KafkaDelivery<TKey, TValue>> Queue { get; } = Channel.CreateUnbounded<KafkaDelivery<TKey, TValue>>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });

    /// <summary>Gets the source that stops taking queued messages and ends waits (retry backoff, store outage).</summary>
    public CancellationTokenSource StopTaking { get; } = new();

    /// <summary>Gets the source that cancels the store transaction in flight (it rolls back).</summary>
    public CancellationTokenSource Abort { get; } = new();

    /// <summary>Gets the worker's task.</summary>
    public Task Worker { get; private set; } = Task.CompletedTask;

    /// <summary>Gets how many fetched messages have not settled.</summary>
    public int Buffered => Volatile.Read(ref _buffered);

    /// <summary>
    /// Gets the offset after the highest one handed to this lane, where its partition's stream continues; -1 before the
    /// first message. Loop thread only.
    /// </summary>
    public long NextToFetch { get; private set; } = -1;

    /// <summary>Gets a value indicating whether the partition should be paused at the broker (backpressure or a store outage).</summary>
    public bool WantsPause => _backpressurePaused || _storePaused;

    /// <summary>Starts the worker.</summary>
    public void Start() => Worker = Task.Run(() => new PartitionWorker<TKey, TValue>(this, _context).RunAsync());

    /// <summary>Queues a fetched message; pauses the partition when its buffer is full.</summary>
    /// <param name="delivery">The message.</param>
    public void Enqueue(KafkaDelivery<TKey, TValue> delivery)
    {
        NextToFetch = Math.Max(NextToFetch, delivery.Offset + 1);
        Queue.Writer.TryWrite(delivery);
        if (Interlocked.Increment(ref _buffered) >= _context.Options.MaxBufferedMessagesPerPartition && !_backpressurePaused)
        {
            _backpressurePaused = true;
            _pauseChanged(this);
        }
    }

    /// <summary>Records that messages up to <paramref name="lastOffset"/> settled, and lifts backpressure at half the buffer.</summary>
    /// <param name="lastOffset">The last settled offset.</param>
    /// <param name="count">How many messages settled.</param>
    public void Settled(long lastOffset, int count)
    {
        _context.Tracker.Settled(Offsets, lastOffset, count);
        if (Interlocked.Add(ref _buffered, -count) <= _context.Options.MaxBufferedMessagesPerPartition / 2 && _backpressurePaused)
        {
            _backpressurePaused = false;
            _pauseChanged(this);
        }
    }

    /// <summary>Pauses the partition while the store is down or misconfigured.</summary>
    public void PauseForStore()
    {
        if (!_storePaused)
        {
            _storePaused = true;
            _pauseChanged(this);
            Log.PausedForStore(_context.Logger, Name);
        }
    }

    /// <summary>Resumes the partition once the store answers (nothing when it was not paused for the store).</summary>
    public void ResumeAfterStore()
    {
        if (_storePaused)
        {
            _storePaused = false;
            _pauseChanged(this);
            Log.ResumedAfterStore(_context.Logger, Name);
        }
    }

    /// <summary>Stops taking queued messages; the worker ends after the message or batch in flight.</summary>
    public void StopTakingWork()
    {
        StopTaking.Cancel();
        Queue.Writer.TryComplete();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        StopTaking.Dispose();
        Abort.Dispose();
    }
}
