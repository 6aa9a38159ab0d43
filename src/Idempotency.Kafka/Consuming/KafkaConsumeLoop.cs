using System.Collections.Concurrent;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.Diagnostics;
using Idempotency.Health;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// The consume loop: one thread runs <c>Consume</c> and owns every call on the consumer (commit, pause, resume);
/// fetched messages go to their partition's lane; a full lane pauses its partition at the broker (backpressure) until
/// half of it settled; settled offsets are committed lazily; a stop drains the lanes and commits what settled.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
internal sealed class KafkaConsumeLoop<TKey, TValue>
{
    private readonly IConsumer<TKey, TValue> _consumer;
    private readonly LaneContext<TKey, TValue> _context;
    private readonly KafkaIdempotencyOptions _options;
    private readonly Dictionary<TopicPartition, long> _highestSeen = [];
    private readonly ConcurrentQueue<PartitionLane<TKey, TValue>> _pauseChanges = new();

    // Partitions this consumer paused and has not resumed, whether or not they are still assigned: the loop's view of
    // what is paused at the broker (loop thread only).
    private readonly HashSet<TopicPartition> _pausedByThisConsumer = [];

    // Set when any lane's worker ended, so that the poll loop looks for a failed one only then, not on every poll.
    private int _workerEnded;

    /// <summary>Creates the loop of one run.</summary>
    /// <param name="consumer">The consumer.</param>
    /// <param name="context">What the lanes share.</param>
    public KafkaConsumeLoop(IConsumer<TKey, TValue> consumer, LaneContext<TKey, TValue> context)
    {
        _consumer = consumer;
        _context = context;
        _options = context.Options;
    }

    /// <summary>Gets the lanes of the assigned partitions; only the loop's thread (and the rebalance callbacks on it) touch it.</summary>
    public Dictionary<TopicPartition, PartitionLane<TKey, TValue>> Lanes { get; } = [];

    /// <summary>Gets or sets the rebalance handling that sees revokes only afterwards (a consumer built without the wrapper's handlers).</summary>
    public RebalanceHandler<TKey, TValue>? LateRevokes { get; set; }

    /// <summary>Consumes until <paramref name="cancellationToken"/> is cancelled or a fatal error, then stops gracefully.</summary>
    /// <param name="heartbeat">Beaten on every poll; set to stopped at the end.</param>
    /// <param name="closeConsumer">Whether to close the consumer (the wrapper built it).</param>
    /// <param name="flushDeadLetters">Flushes the dead-letter producer (the wrapper built it).</param>
    /// <param name="cancellationToken">Stops the loop.</param>
    /// <exception cref="KafkaException">A fatal consumer error stopped the loop (after the same graceful shutdown).</exception>
    /// <exception cref="InvalidOperationException">A lane's worker failed unexpectedly.</exception>
    public void Run(ConsumerHeartbeat? heartbeat, bool closeConsumer, Action? flushDeadLetters, CancellationToken cancellationToken)
    {
        Exception? fatal = null;
        try
        {
            if (_options.Topics.Count > 0)
            {
                _consumer.Subscribe(_options.Topics);
            }

            while (!cancellationToken.IsCancellationRequested)
            {
                // The state is the store gate's to set (running, paused, misconfigured); the loop only shows it is alive.
                heartbeat?.Beat();
                ApplyPauseChanges();
                if (FailedLane() is { } failed)
                {
                    fatal = failed;
                    break;
                }

                MaybeCommit();
                Poll();
            }
        }
        catch (KafkaException e) when (e.Error.IsFatal)
        {
            Log.Fatal(_context.Logger, e);
            fatal = e;
        }

        // Graceful shutdown: no more fetching; in-flight work finishes or is cancelled; what settled is committed.
        var all = Lanes.Values.ToList();
        StopLanes(all, _options.ShutdownTimeout);
        var committed = _context.Hooks.CommitOnShutdown && fatal is null && Commit(all);
        Lanes.Clear();
        if (closeConsumer)
        {
            try
            {
                _consumer.Close();
            }
            catch (KafkaException e)
            {
                Log.ConsumeError(_context.Logger, "close", e.Error.Reason);
            }
        }

        flushDeadLetters?.Invoke();
        if (heartbeat is not null)
        {
            heartbeat.State = ConsumerState.Stopped;
        }

        Log.Stopped(_context.Logger, committed);
        if (fatal is not null)
        {
            throw fatal;
        }
    }

    /// <summary>Cuts the shutdown drain short: in-flight work is cancelled (rolled back) at once. Thread-safe.</summary>
    public void AbortDrain() => _context.DrainAbort.Cancel();

    /// <summary>Starts the lane of a partition; one this consumer paused before and never resumed is resumed by the loop.</summary>
    /// <param name="partition">The partition.</param>
    /// <returns>The lane.</returns>
    public PartitionLane<TKey, TValue> StartLane(TopicPartition partition)
    {
        // librdkafka keeps an application's pause across an eager revoke and re-assign: a partition this consumer paused
        // before (backpressure, store outage) would come back paused and never be read again, so the loop resumes it once
        // the assignment is in place. Only such a partition: every other one is left as librdkafka assigned it, without a
        // resume call on each assignment.
        var lane = new PartitionLane<TKey, TValue>(partition, _context, _pauseChanges.Enqueue);
        Lanes[partition] = lane;
        if (_pausedByThisConsumer.Contains(partition))
        {
            _pauseChanges.Enqueue(lane);
        }

        lane.Start();
        lane.Worker.ContinueWith(static (_, loop) => Volatile.Write(ref ((KafkaConsumeLoop<TKey, TValue>)loop!)._workerEnded, 1), this, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        return lane;
    }

    /// <summary>Gets whether some partition this consumer paused has not been resumed (assigned or not).</summary>
    public bool HoldsPartitionsPaused => _pausedByThisConsumer.Count > 0;

    /// <summary>
    /// Starts lanes (which resume them) for assigned partitions this consumer paused that have no lane: their lane went
    /// with a revoke the loop saw only afterwards, and librdkafka kept the pause across the re-assign, so no message
    /// would ever arrive to start one.
    /// </summary>
    /// <param name="assigned">The consumer's assignment.</param>
    public void StartLanesOfPausedPartitions(HashSet<TopicPartition> assigned)
    {
        foreach (var partition in _pausedByThisConsumer)
        {
            if (assigned.Contains(partition) && !Lanes.ContainsKey(partition))
            {
                StartLane(partition);
            }
        }
    }

    /// <summary>Stops lanes: they stop taking work and finish what is in flight within <paramref name="timeout"/>, after which it is cancelled (rolled back).</summary>
    /// <param name="lanes">The lanes.</param>
    /// <param name="timeout">How long in-flight work may take.</param>
    public void StopLanes(List<PartitionLane<TKey, TValue>> lanes, TimeSpan timeout)
    {
        if (lanes.Count == 0)
        {
            return;
        }

        foreach (var lane in lanes)
        {
            lane.StopTakingWork();
        }

        // Synchronous: this runs on the loop's thread or inside librdkafka's rebalance callback, which must return
        // before the consumer goes on. Cancelled work rolls back; a commit already sent is awaited, 30 s at most.
        _context.Drain.Drain(
            Task.WhenAll(lanes.Select(l => l.Worker)),
            timeout,
            () => lanes.ForEach(l => l.Abort.Cancel()),
            _context.DrainAbort.Token,
            unwindLimit: TimeSpan.FromSeconds(30));
    }

    /// <summary>Commits, for each lane, the offset after its settled prefix. Runs on the loop's thread.</summary>
    /// <param name="lanes">The lanes.</param>
    /// <returns><see langword="false"/> when the broker refused the commit (later offsets are committed next time).</returns>
    public bool Commit(IEnumerable<PartitionLane<TKey, TValue>> lanes)
    {
        if (OffsetTracker.Committable(lanes.Select(l => (l.Partition, l.Offsets))) is not { } offsets)
        {
            return true;
        }

        try
        {
            _consumer.Commit(offsets);
            foreach (var offset in offsets)
            {
                if (Lanes.TryGetValue(offset.TopicPartition, out var lane))
                {
                    lane.Offsets.CommittedNext = Math.Max(lane.Offsets.CommittedNext, offset.Offset.Value);
                }
            }

            return true;
        }
        catch (KafkaException e)
        {
            // Nothing is lost: the next commit carries later offsets, and what a failed commit leaves behind is redelivered as duplicates.
            Log.CommitFailed(_context.Logger, e, e.Error.Code);
            return false;
        }
    }

    /// <summary>Consumes once and queues what came.</summary>
    private void Poll()
    {
        ConsumeResult<TKey, TValue>? result;
        try
        {
            result = _consumer.Consume(_options.PollTimeout);
        }
        catch (ConsumeException e) when (!e.Error.IsFatal)
        {
            // Only a deserialization failure carries a real message. Other consume errors (a fetch that failed or timed
            // out) also come with a record, but its offset is just the fetch position and its value the error text:
            // dead-lettering it would commit past a message nobody processed.
            if (e.Error.Code is ErrorCode.Local_KeyDeserialization or ErrorCode.Local_ValueDeserialization
                && e.ConsumerRecord is { } raw && raw.Message is not null)
            {
                // A message that cannot be deserialized: it keeps its place in its partition and is dead-lettered there.
                Enqueue(raw.TopicPartition, KafkaDelivery<TKey, TValue>.Unreadable(raw, e));
            }
            else
            {
                Log.ConsumeError(_context.Logger, e.ConsumerRecord?.TopicPartition?.ToString() ?? "-", e.Error.Reason);
            }

            return;
        }

        LateRevokes?.CheckAssignment();
        if (result is not null && !result.IsPartitionEOF && result.Message is not null)
        {
            // The body is selected here, once, next to deserialization: a payload the selector cannot read is queued as
            // unreadable and dead-lettered in its place, like one the deserializer could not read.
            Enqueue(result.TopicPartition, _context.Reader.Read(result));
        }
    }

    private void Enqueue(TopicPartition partition, KafkaDelivery<TKey, TValue> delivery)
    {
        if (!Lanes.TryGetValue(partition, out var lane))
        {
            lane = StartLane(partition);
        }

        var offset = delivery.Offset;
        if (_highestSeen.TryGetValue(partition, out var highest) && offset <= highest)
        {
            // Seen before in this process: only a rebalance (or a revoke that dropped queued work) makes Kafka hand it out again.
            delivery = delivery with { Reread = true };
            IdempotencyMetrics.RecordRedelivered("kafka", _context.Processor.HandlerName, partition.Topic);
        }
        else
        {
            _highestSeen[partition] = offset;
        }

        lane.Enqueue(delivery);
    }

    /// <summary>
    /// A lane's worker that died of an unexpected exception (a bug, not a handler or store failure, which the engine
    /// handles) would leave its partition stalled with nobody noticing: the loop stops and RunAsync fails with it.
    /// </summary>
    private InvalidOperationException? FailedLane()
    {
        // Cleared before the look, so a worker that ends during it is looked for on the next poll.
        if (Interlocked.Exchange(ref _workerEnded, 0) == 0)
        {
            return null;
        }

        foreach (var lane in Lanes.Values)
        {
            if (lane.Worker.IsFaulted)
            {
                var exception = lane.Worker.Exception!.GetBaseException();
                Log.WorkerFailed(_context.Logger, exception, lane.Name);
                return new InvalidOperationException($"The worker of {lane.Name} failed: {exception.Message}", exception);
            }
        }

        return null;
    }

    private void MaybeCommit()
    {
        if (_context.Tracker.CommitDue(out var pending))
        {
            _context.Tracker.CommitCompleted(pending, Commit(Lanes.Values));
        }
    }

    /// <summary>Pauses or resumes partitions at the broker as their lanes want; on the loop's thread only.</summary>
    private void ApplyPauseChanges()
    {
        while (_pauseChanges.TryDequeue(out var lane))
        {
            if (!Lanes.TryGetValue(lane.Partition, out var current) || !ReferenceEquals(current, lane))
            {
                continue;
            }

            var wanted = lane.WantsPause;
            if (wanted == _pausedByThisConsumer.Contains(lane.Partition))
            {
                continue;
            }

            try
            {
                if (wanted)
                {
                    _consumer.Pause([lane.Partition]);
                    _pausedByThisConsumer.Add(lane.Partition);
                }
                else
                {
                    _consumer.Resume([lane.Partition]);
                    _pausedByThisConsumer.Remove(lane.Partition);
                    FetchNow(lane);
                }
            }
            catch (KafkaException e)
            {
                Log.ConsumeError(_context.Logger, lane.Partition.ToString(), e.Error.Reason);
            }
        }
    }

    /// <summary>
    /// librdkafka fetches a resumed partition only when its broker thread next looks, which is up to a second later when
    /// every partition that thread fetches was paused (a backlog fills every lane at once), and a lane that drained
    /// meanwhile idles. A seek to where the lane's stream continues, the offset the fetch resumes from anyway, starts it
    /// at once. A lane that was handed nothing yet does not know that offset and is left to librdkafka.
    /// </summary>
    private void FetchNow(PartitionLane<TKey, TValue> lane)
    {
        if (lane.NextToFetch < 0)
        {
            return;
        }

        try
        {
            _consumer.Seek(new TopicPartitionOffset(lane.Partition, lane.NextToFetch));
        }
        catch (KafkaException)
        {
            // The partition resumes on librdkafka's own schedule; the seek only saved time.
        }
    }
}
