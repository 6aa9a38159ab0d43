namespace Idempotency.Storage;

/// <summary>
/// A store that can keep consumer positions in the same transaction as the effects ("offsets stored outside the
/// broker"): an adapter that sets <see cref="IncomingMessage.Position"/> can then resume exactly after the last
/// committed message even when the broker lost its own offset commit.
/// </summary>
/// <remarks>
/// An implementation persists <see cref="CompletionRecord.Position"/> of every completion in the transaction that
/// commits the completion, keeping per group, stream and partition the greatest offset ever committed.
/// </remarks>
public interface IConsumerPositionStore
{
    /// <summary>Reads the stored positions of a group in some partitions of one stream.</summary>
    /// <param name="group">The consumer group.</param>
    /// <param name="stream">The stream (topic).</param>
    /// <param name="partitions">The partitions asked for.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>For each partition with a stored position, the offset of the last processed message; partitions without one are absent.</returns>
    ValueTask<IReadOnlyDictionary<int, long>> LoadPositionsAsync(string group, string stream, IReadOnlyCollection<int> partitions, CancellationToken cancellationToken = default);
}
