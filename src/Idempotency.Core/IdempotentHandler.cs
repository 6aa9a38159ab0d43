namespace Idempotency;

/// <summary>Creates handlers from delegates.</summary>
public static partial class IdempotentHandler
{
    /// <summary>Wraps a delegate as a message handler.</summary>
    /// <param name="handle">The handler body.</param>
    /// <returns>The handler.</returns>
    public static IIdempotentMessageHandler Create(Func<MessageContext, CancellationToken, ValueTask> handle)
    {
        ArgumentNullException.ThrowIfNull(handle);
        return new MessageDelegateHandler(handle);
    }

    /// <summary>Wraps delegates as a batch handler with its per-message fallback.</summary>
    /// <param name="handleBatch">Handles all new messages of a batch.</param>
    /// <param name="handle">Handles one message; used to isolate a failure after a batch threw.</param>
    /// <returns>The handler.</returns>
    public static IIdempotentBatchHandler CreateBatch(Func<BatchContext, CancellationToken, ValueTask> handleBatch, Func<MessageContext, CancellationToken, ValueTask> handle)
    {
        ArgumentNullException.ThrowIfNull(handleBatch);
        ArgumentNullException.ThrowIfNull(handle);
        return new BatchDelegateHandler(handle, handleBatch);
    }

    private sealed class MessageDelegateHandler(Func<MessageContext, CancellationToken, ValueTask> handle) : IIdempotentMessageHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => handle(context, cancellationToken);
    }

    private sealed class BatchDelegateHandler(
        Func<MessageContext, CancellationToken, ValueTask> handle,
        Func<BatchContext, CancellationToken, ValueTask> handleBatch) : IIdempotentBatchHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => handle(context, cancellationToken);

        public ValueTask HandleBatchAsync(BatchContext batch, CancellationToken cancellationToken) => handleBatch(batch, cancellationToken);
    }
}
