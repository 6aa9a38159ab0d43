using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using Idempotency.InMemory;
using Idempotency.Storage;

namespace Idempotency.Testing;

/// <summary>
/// Builds the contexts the pipeline hands to a handler, so a handler can be unit-tested without a processor or a broker.
/// </summary>
/// <example>
/// <code>
/// var context = ContextFactory.CreateMessageContext("order-1", """{"id":"order-1","total":5}"""u8.ToArray());
/// await new OrderHandler().HandleAsync(context, CancellationToken.None);
/// </code>
/// </example>
public static class ContextFactory
{
    /// <summary>The handler name contexts get unless one is given: <c>test</c>.</summary>
    public const string DefaultHandlerName = "test";

    /// <summary>Creates the context of one message.</summary>
    /// <param name="message">The message.</param>
    /// <param name="transaction">
    /// The store transaction the handler's writes join, e.g. from <c>await store.BeginAsync()</c> of a real store;
    /// <see langword="null"/> for a fresh <see cref="InMemoryIdempotencyStore"/> transaction (commit it yourself to apply
    /// effects enlisted with <see cref="InMemoryIdempotencyStore.InMemoryTransaction.OnCommit"/>).
    /// </param>
    /// <param name="handlerName">The handler name that scopes the key.</param>
    /// <returns>The context.</returns>
    /// <exception cref="ArgumentException">The message has no key.</exception>
    public static MessageContext CreateMessageContext(IncomingMessage message, IIdempotencyTransaction? transaction = null, string handlerName = DefaultHandlerName)
    {
        ArgumentNullException.ThrowIfNull(message);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        if (string.IsNullOrEmpty(message.Key))
        {
            throw new ArgumentException("A handler only ever sees messages with a key; give the message one.", nameof(message));
        }

        return new MessageContext(message, message.Key, handlerName, transaction ?? new InMemoryIdempotencyStore.InMemoryTransaction(new InMemoryIdempotencyStore()));
    }

    /// <summary>Creates the context of one message from its key and body.</summary>
    /// <param name="key">The idempotency key.</param>
    /// <param name="body">The payload.</param>
    /// <param name="transaction">The store transaction, or <see langword="null"/> for an in-memory one.</param>
    /// <param name="handlerName">The handler name that scopes the key.</param>
    /// <returns>The context.</returns>
    public static MessageContext CreateMessageContext(string key, ReadOnlyMemory<byte> body, IIdempotencyTransaction? transaction = null, string handlerName = DefaultHandlerName)
    {
        ArgumentException.ThrowIfNullOrEmpty(key);
        return CreateMessageContext(new IncomingMessage(key, body), transaction, handlerName);
    }

    /// <summary>Creates the context of one message whose body is <paramref name="payload"/> serialized as JSON (<see cref="JsonSerializerOptions.Web"/>).</summary>
    /// <typeparam name="T">The message type.</typeparam>
    /// <param name="key">The idempotency key.</param>
    /// <param name="payload">The message, serialized into the body.</param>
    /// <param name="transaction">The store transaction, or <see langword="null"/> for an in-memory one.</param>
    /// <param name="handlerName">The handler name that scopes the key.</param>
    /// <returns>The context.</returns>
    [RequiresUnreferencedCode("Serializes with reflection.")]
    [RequiresDynamicCode("Serializes with reflection.")]
    public static MessageContext CreateJsonMessageContext<T>(string key, T payload, IIdempotencyTransaction? transaction = null, string handlerName = DefaultHandlerName) =>
        CreateMessageContext(key, JsonSerializer.SerializeToUtf8Bytes(payload, JsonSerializerOptions.Web), transaction, handlerName);

    /// <summary>Creates the context of a batch; its messages share <paramref name="transaction"/>.</summary>
    /// <param name="messages">The messages of the batch, with keys.</param>
    /// <param name="transaction">The shared store transaction, or <see langword="null"/> for an in-memory one.</param>
    /// <param name="handlerName">The handler name that scopes the keys.</param>
    /// <returns>The batch context.</returns>
    public static BatchContext CreateBatchContext(IEnumerable<IncomingMessage> messages, IIdempotencyTransaction? transaction = null, string handlerName = DefaultHandlerName)
    {
        ArgumentNullException.ThrowIfNull(messages);
        transaction ??= new InMemoryIdempotencyStore.InMemoryTransaction(new InMemoryIdempotencyStore());
        var contexts = messages.Select(m => CreateMessageContext(m, transaction, handlerName)).ToList();
        return new BatchContext(contexts, transaction, handlerName);
    }
}
