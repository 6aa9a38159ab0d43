using Idempotency.Outbox;
using Idempotency.Storage;

namespace Idempotency;

/// <summary>What a handler sees for one new message: the message, its key, and the store transaction its writes must join.</summary>
/// <remarks>
/// Store packages add typed accessors, e.g. <c>context.GetNpgsqlTransaction()</c> in Idempotency.Postgres.
/// A context is valid only while the handler runs.
/// </remarks>
public sealed class MessageContext
{
    private List<OutboxMessage>? _outbox;

    internal MessageContext(IncomingMessage message, string key, string handlerName, IIdempotencyTransaction transaction)
    {
        Message = message;
        Key = key;
        HandlerName = handlerName;
        Transaction = transaction;
    }

    /// <summary>Gets the message.</summary>
    public IncomingMessage Message { get; }

    /// <summary>Gets the validated idempotency key.</summary>
    public string Key { get; }

    /// <summary>Gets the handler name that scopes the key.</summary>
    public string HandlerName { get; }

    /// <summary>Gets the store transaction; the handler's writes must use it to commit with the key.</summary>
    public IIdempotencyTransaction Transaction { get; }

    /// <summary>Gets the payload.</summary>
    public ReadOnlyMemory<byte> Body => Message.Body;

    /// <summary>Gets or sets a result stored with the key, which stores that keep results return for duplicates.</summary>
    public ReadOnlyMemory<byte>? Result { get; set; }

    /// <summary>Gets the messages this handler has added to the outbox so far.</summary>
    public IReadOnlyList<OutboxMessage> Outbox => (IReadOnlyList<OutboxMessage>?)_outbox ?? [];

    /// <summary>Adds a message to send on; it is written in this transaction and published only after it commits.</summary>
    /// <param name="message">The message to send.</param>
    public void AddOutgoing(OutboxMessage message)
    {
        ArgumentNullException.ThrowIfNull(message);
        (_outbox ??= []).Add(message);
    }

    /// <summary>Returns the broker client's own message object.</summary>
    /// <typeparam name="T">The broker client's message type.</typeparam>
    /// <returns>The native message.</returns>
    /// <exception cref="InvalidOperationException">The message did not come from that broker client.</exception>
    public T GetNative<T>() => Message.Native is T native
        ? native
        : throw new InvalidOperationException($"The message's native object is {Message.Native?.GetType().Name ?? "null"}, not {typeof(T).Name}.");

    internal void ClearOutbox() => _outbox?.Clear();
}
