using Idempotency.Delivery;

namespace Idempotency.Sqs;

/// <summary>Running totals of what an <see cref="IdempotentSqsWorker"/> did with the queue; thread-safe to read at any time.</summary>
public sealed class SqsWorkerStatistics
{
    private long _received;
    private long _deleted;
    private long _deleteFailures;
    private long _retried;
    private long _deadLettered;
    private long _deadLetterFailures;
    private long _released;
    private long _visibilityExtensions;
    private long _visibilityExtensionFailures;
    private long _receiveErrors;

    /// <summary>Gets how many messages were received.</summary>
    public long Received => Interlocked.Read(ref _received);

    /// <summary>Gets how many messages were deleted after their effects committed (or after an explicit dead-letter).</summary>
    public long Deleted => Interlocked.Read(ref _deleted);

    /// <summary>Gets how many deletes SQS refused or that failed; those messages come back and are duplicates.</summary>
    public long DeleteFailures => Interlocked.Read(ref _deleteFailures);

    /// <summary>Gets how many failed messages were scheduled for a retry by changing their visibility.</summary>
    public long Retried => Interlocked.Read(ref _retried);

    /// <summary>Gets how many messages were sent to <see cref="SqsIdempotencyOptions.DeadLetterQueueUrl"/>.</summary>
    public long DeadLettered => Interlocked.Read(ref _deadLettered);

    /// <summary>Gets how many explicit dead-letter sends failed (the message stays in the queue).</summary>
    public long DeadLetterFailures => Interlocked.Read(ref _deadLetterFailures);

    /// <summary>Gets how many messages were made visible again without being handled (shutdown, FIFO group blocked, redrive left to SQS).</summary>
    public long Released => Interlocked.Read(ref _released);

    /// <summary>Gets how many visibility extensions the heartbeat made.</summary>
    public long VisibilityExtensions => Interlocked.Read(ref _visibilityExtensions);

    /// <summary>Gets how many visibility extensions failed (another worker may then receive a copy; the store keeps one effect).</summary>
    public long VisibilityExtensionFailures => Interlocked.Read(ref _visibilityExtensionFailures);

    /// <summary>Gets how many times polling paused because the store was unreachable or misconfigured (the store gate's closures).</summary>
    public long StoreOutages => Gate?.Closures ?? 0;

    /// <summary>Gets how many receive calls failed.</summary>
    public long ReceiveErrors => Interlocked.Read(ref _receiveErrors);

    internal void AddReceived(int count) => Interlocked.Add(ref _received, count);

    internal void AddDeleted(int count) => Interlocked.Add(ref _deleted, count);

    internal void AddDeleteFailures(int count) => Interlocked.Add(ref _deleteFailures, count);

    internal void AddRetried() => Interlocked.Increment(ref _retried);

    internal void AddDeadLettered() => Interlocked.Increment(ref _deadLettered);

    internal void AddDeadLetterFailure() => Interlocked.Increment(ref _deadLetterFailures);

    internal void AddReleased(int count) => Interlocked.Add(ref _released, count);

    internal void AddVisibilityExtensions(int count) => Interlocked.Add(ref _visibilityExtensions, count);

    internal void AddVisibilityExtensionFailures(int count) => Interlocked.Add(ref _visibilityExtensionFailures, count);

    /// <summary>Gets or sets the worker's store gate, which counts its own closures.</summary>
    internal StoreGate? Gate { get; set; }

    internal void AddReceiveError() => Interlocked.Increment(ref _receiveErrors);

    /// <inheritdoc/>
    public override string ToString() =>
        $"received={Received} deleted={Deleted} deleteFailures={DeleteFailures} retried={Retried} deadLettered={DeadLettered} " +
        $"released={Released} extensions={VisibilityExtensions} extensionFailures={VisibilityExtensionFailures} storeOutages={StoreOutages} receiveErrors={ReceiveErrors}";
}
