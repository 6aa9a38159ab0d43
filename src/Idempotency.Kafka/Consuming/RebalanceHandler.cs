using Confluent.Kafka;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// What a rebalance does to the lanes: an assigned partition gets a lane (assumed paused at the broker until the loop
/// resumes it) and, with offsets kept in the store, a start offset from the store when the store is ahead; a revoked
/// partition's lane finishes its work in flight within <see cref="KafkaIdempotencyOptions.RevokeTimeout"/> and its
/// settled offsets are committed; a lost partition's work is cancelled (rolled back) and nothing is committed.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <remarks>Runs on the consume loop's thread: librdkafka calls the rebalance handlers from inside <c>Consume</c>.</remarks>
internal sealed class RebalanceHandler<TKey, TValue>
{
    private readonly IConsumer<TKey, TValue> _consumer;
    private readonly KafkaConsumeLoop<TKey, TValue> _loop;
    private readonly IdempotentProcessor _processor;
    private readonly KafkaIdempotencyOptions _options;
    private readonly string? _positionGroup;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private long _nextAssignmentCheck;

    /// <summary>Creates the rebalance handling of one run.</summary>
    /// <param name="consumer">The consumer.</param>
    /// <param name="loop">The consume loop that owns the lanes.</param>
    /// <param name="context">What the lanes share.</param>
    /// <param name="positionGroup">The group whose positions are kept in the store; null when they are not.</param>
    public RebalanceHandler(IConsumer<TKey, TValue> consumer, KafkaConsumeLoop<TKey, TValue> loop, LaneContext<TKey, TValue> context, string? positionGroup)
    {
        _consumer = consumer;
        _loop = loop;
        _processor = context.Processor;
        _options = context.Options;
        _positionGroup = positionGroup;
        _logger = context.Logger;
        _time = context.Time;
    }

    /// <summary>Starts lanes for newly assigned partitions and says where each starts.</summary>
    /// <param name="partitions">The assigned partitions.</param>
    /// <returns>The start offsets: <see cref="Offset.Unset"/> (the committed offset) unless the store is ahead.</returns>
    public IEnumerable<TopicPartitionOffset> OnAssigned(List<TopicPartition> partitions)
    {
        Log.Assigned(_logger, string.Join(", ", partitions));
        foreach (var partition in partitions)
        {
            if (!_loop.Lanes.ContainsKey(partition))
            {
                _loop.StartLane(partition);
            }
        }

        return _positionGroup is null
            ? partitions.Select(p => new TopicPartitionOffset(p, Offset.Unset))
            : StartOffsetsFromStore(partitions, _positionGroup);
    }

    /// <summary>Stops the lanes of revoked or lost partitions.</summary>
    /// <param name="partitions">The partitions.</param>
    /// <param name="lost">Whether they were lost (another member may own them already) rather than revoked.</param>
    public void OnRevoked(List<TopicPartition> partitions, bool lost)
    {
        var lanes = partitions.Select(p => _loop.Lanes.GetValueOrDefault(p)).OfType<PartitionLane<TKey, TValue>>().ToList();
        if (lost)
        {
            // Another member may own them already: cancel everything in flight (it rolls back) and commit nothing.
            foreach (var lane in lanes)
            {
                lane.StopTaking.Cancel();
                lane.Abort.Cancel();
            }

            _loop.StopLanes(lanes, TimeSpan.Zero);
            Log.Lost(_logger, string.Join(", ", partitions));
        }
        else
        {
            _loop.StopLanes(lanes, _options.RevokeTimeout);
            _loop.Commit(lanes);
            Log.Revoked(_logger, string.Join(", ", partitions));
        }

        foreach (var lane in lanes)
        {
            _loop.Lanes.Remove(lane.Partition);
            lane.Dispose();
        }
    }

    /// <summary>
    /// Without the wrapper's rebalance handlers a revoke is seen only afterwards, from the assignment (checked every
    /// 250 ms): lanes of partitions no longer assigned stop, and partitions assigned back while still paused get a lane.
    /// </summary>
    public void CheckAssignment()
    {
        var now = _time.GetTimestamp();
        if (now < _nextAssignmentCheck || (_loop.Lanes.Count == 0 && !_loop.HoldsPartitionsPaused))
        {
            return;
        }

        _nextAssignmentCheck = now + (long)(0.25 * _time.TimestampFrequency);
        var assigned = _consumer.Assignment.ToHashSet();
        var gone = _loop.Lanes.Keys.Where(p => !assigned.Contains(p)).ToList();
        if (gone.Count > 0)
        {
            OnRevoked(gone, lost: false);
        }

        _loop.StartLanesOfPausedPartitions(assigned);
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
}
