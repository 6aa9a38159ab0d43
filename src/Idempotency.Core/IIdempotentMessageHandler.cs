namespace Idempotency;

/// <summary>Handles one new message inside the store transaction. Throwing rolls everything back.</summary>
public interface IIdempotentMessageHandler
{
    /// <summary>Applies the message's effects using <see cref="MessageContext.Transaction"/>.</summary>
    /// <param name="context">The message, its key and the transaction.</param>
    /// <param name="cancellationToken">Signals shutdown.</param>
    /// <returns>A task that completes when the effects are written (not yet committed).</returns>
    ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken);
}

/// <summary>
/// Handles all new messages of a batch at once inside one store transaction, so it can write them set-based
/// (one statement for the whole batch). Throwing rolls the batch back; the pipeline then retries the messages
/// one at a time through <see cref="IIdempotentMessageHandler"/> to isolate the failing one.
/// </summary>
public interface IIdempotentBatchHandler : IIdempotentMessageHandler
{
    /// <summary>Applies the effects of every message in <see cref="BatchContext.Messages"/>.</summary>
    /// <param name="batch">The new messages and the shared transaction.</param>
    /// <param name="cancellationToken">Signals shutdown.</param>
    /// <returns>A task that completes when the effects are written (not yet committed).</returns>
    ValueTask HandleBatchAsync(BatchContext batch, CancellationToken cancellationToken);
}
