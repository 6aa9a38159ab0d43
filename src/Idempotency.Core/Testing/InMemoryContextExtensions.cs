using Idempotency.InMemory;
using Idempotency.Storage;

namespace Idempotency.Testing;

/// <summary>Helpers for handlers tested against the <see cref="InMemoryIdempotencyStore"/>.</summary>
public static class InMemoryContextExtensions
{
    /// <summary>
    /// Enlists an effect that applies only if the in-memory transaction commits, as a database write would: the
    /// in-memory stand-in for "write with the context's transaction".
    /// </summary>
    /// <param name="context">The handler's context.</param>
    /// <param name="effect">The effect.</param>
    /// <exception cref="InvalidOperationException">The context's transaction is not the in-memory store's (nor a layered store's over it).</exception>
    public static void OnInMemoryCommit(this MessageContext context, Action effect)
    {
        ArgumentNullException.ThrowIfNull(context);
        var current = context.Transaction;
        while (current is ILayeredTransaction layered)
        {
            current = layered.SourceTransaction;
        }

        var transaction = current as InMemoryIdempotencyStore.InMemoryTransaction
            ?? throw new InvalidOperationException($"The store transaction is a {context.Transaction.GetType().Name}, not the in-memory store's.");
        transaction.OnCommit(effect);
    }
}
