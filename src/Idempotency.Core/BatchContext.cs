using Idempotency.Storage;

namespace Idempotency;

/// <summary>What a batch handler sees: every new message of the batch and the one store transaction they share.</summary>
public sealed class BatchContext
{
    internal BatchContext(IReadOnlyList<MessageContext> messages, IIdempotencyTransaction transaction, string handlerName)
    {
        Messages = messages;
        Transaction = transaction;
        HandlerName = handlerName;
    }

    /// <summary>Gets the new messages of the batch, in delivery order; duplicates are already left out.</summary>
    public IReadOnlyList<MessageContext> Messages { get; }

    /// <summary>Gets the store transaction shared by the whole batch.</summary>
    public IIdempotencyTransaction Transaction { get; }

    /// <summary>Gets the handler name that scopes the keys.</summary>
    public string HandlerName { get; }
}
