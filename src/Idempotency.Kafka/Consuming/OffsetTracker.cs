using Confluent.Kafka;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// The consumer's offsets: for each partition the settled prefix (every message before it committed in the store or
/// was dead-lettered), which offsets may be committed and when. The adapter's one rule about positions lives here: a
/// position (the group's commit, or the position a batch stores with its keys) never passes a message that has not
/// settled.
/// </summary>
/// <remarks>
/// Lanes report settlements from their workers; the consume loop commits on its own thread. Commits are lazy (every
/// <see cref="KafkaIdempotencyOptions.CommitEveryMessages"/> settlements or <see cref="KafkaIdempotencyOptions.CommitInterval"/>):
/// what a crash leaves uncommitted is redelivered and skipped as a duplicate.
/// </remarks>
internal sealed class OffsetTracker
{
    private readonly TimeProvider _time;
    private readonly int _commitEveryMessages;
    private readonly TimeSpan _commitInterval;
    private long _settledSinceCommit;
    private long _lastCommit;
    private long _nextCommitAttempt;

    /// <summary>Creates the tracker.</summary>
    /// <param name="options">The commit cadence.</param>
    /// <param name="time">The clock.</param>
    public OffsetTracker(KafkaIdempotencyOptions options, TimeProvider time)
    {
        _time = time;
        _commitEveryMessages = options.CommitEveryMessages;
        _commitInterval = options.CommitInterval;
        _lastCommit = time.GetTimestamp();
    }

    /// <summary>Records that a partition's messages up to and including <paramref name="lastOffset"/> settled.</summary>
    /// <param name="partition">The partition's offsets.</param>
    /// <param name="lastOffset">The last settled offset; every earlier one settled too.</param>
    /// <param name="count">How many messages settled with it.</param>
    public void Settled(PartitionOffsets partition, long lastOffset, int count)
    {
        partition.SettleThrough(lastOffset);
        Interlocked.Add(ref _settledSinceCommit, count);
    }

    /// <summary>Returns whether a lazy commit is due (enough settlements, or the interval passed), and how many settlements it covers.</summary>
    /// <param name="pending">The settlements since the last commit.</param>
    /// <returns><see langword="true"/> when the loop should commit now.</returns>
    public bool CommitDue(out long pending)
    {
        var now = _time.GetTimestamp();
        pending = Interlocked.Read(ref _settledSinceCommit);
        return pending > 0 && now >= _nextCommitAttempt &&
            (pending >= _commitEveryMessages || _time.GetElapsedTime(_lastCommit, now) >= _commitInterval);
    }

    /// <summary>Returns the offsets to commit: for each partition whose settled prefix moved since its last commit, the offset after it.</summary>
    /// <param name="partitions">The partitions.</param>
    /// <returns>The offsets, or null when nothing moved.</returns>
    public static List<TopicPartitionOffset>? Committable(IEnumerable<(TopicPartition Partition, PartitionOffsets Offsets)> partitions)
    {
        List<TopicPartitionOffset>? offsets = null;
        foreach (var (partition, state) in partitions)
        {
            var next = state.SettledNext;
            if (next > state.CommittedNext)
            {
                (offsets ??= []).Add(new TopicPartitionOffset(partition, next));
            }
        }

        return offsets;
    }

    /// <summary>Records a commit's outcome, for the cadence.</summary>
    /// <param name="pending">The settlements it covered (from <see cref="CommitDue"/>).</param>
    /// <param name="succeeded">Whether the broker took it; a failed one is retried shortly with later offsets.</param>
    public void CommitCompleted(long pending, bool succeeded)
    {
        var now = _time.GetTimestamp();
        if (succeeded)
        {
            Interlocked.Add(ref _settledSinceCommit, -pending);
            _lastCommit = now;
        }
        else
        {
            _nextCommitAttempt = now + (long)(0.2 * _time.TimestampFrequency);
        }
    }
}

/// <summary>One partition's settled prefix and what of it is committed.</summary>
internal sealed class PartitionOffsets
{
    private long _settledNext = -1;

    /// <summary>Gets the offset after the settled prefix (-1 while nothing settled).</summary>
    public long SettledNext => Volatile.Read(ref _settledNext);

    /// <summary>Gets or sets the offset last committed for the partition by this consumer.</summary>
    public long CommittedNext { get; set; } = -1;

    /// <summary>Moves the settled prefix to just after <paramref name="lastOffset"/>; never backwards.</summary>
    /// <param name="lastOffset">The last settled offset.</param>
    internal void SettleThrough(long lastOffset)
    {
        // One writer (the partition's worker), which settles in offset order.
        if (lastOffset + 1 > _settledNext)
        {
            Volatile.Write(ref _settledNext, lastOffset + 1);
        }
    }
}

/// <summary>
/// The settled prefix of one batch that is processed in one store transaction and then, for its failures, one message
/// at a time: which of its messages may carry their position to the store, and how far the partition's prefix may move
/// while a failed (or unreadable) message is still being retried or dead-lettered.
/// </summary>
internal sealed class BatchPrefix
{
    private readonly IReadOnlyList<long> _offsets;
    private readonly Action<long, int> _settled;
    private long _firstUnsettled = long.MaxValue;
    private int _marked;

    /// <summary>Creates the prefix of a batch.</summary>
    /// <param name="offsets">The batch's offsets, ascending.</param>
    /// <param name="settled">Reports that the messages up to an offset settled (last offset, count).</param>
    public BatchPrefix(IReadOnlyList<long> offsets, Action<long, int> settled)
    {
        _offsets = offsets;
        _settled = settled;
    }

    /// <summary>Records that a message did not settle with the batch (it failed, or is unreadable): no position may pass it, in this round or any later one.</summary>
    /// <param name="offset">Its offset.</param>
    public void NotSettled(long offset) => _firstUnsettled = Math.Min(_firstUnsettled, offset);

    /// <summary>Returns whether a message may store its position with its key (every earlier message of the batch settled or will with it).</summary>
    /// <param name="offset">Its offset.</param>
    /// <returns><see langword="true"/> when it is before every unsettled message.</returns>
    public bool MayCarryPosition(long offset) => offset < _firstUnsettled;

    /// <summary>Settles the batch's messages before <paramref name="offset"/>: call it when every one of them settled.</summary>
    /// <param name="offset">The offset of the next unsettled message.</param>
    public void SettledBefore(long offset)
    {
        var end = _marked;
        while (end < _offsets.Count && _offsets[end] < offset)
        {
            end++;
        }

        if (end > _marked)
        {
            _settled(_offsets[end - 1], end - _marked);
            _marked = end;
        }
    }

    /// <summary>Settles the rest of the batch: call it once every message settled.</summary>
    public void SettledAll() => SettledBefore(long.MaxValue);
}
