using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Idempotency;

/// <summary>
/// A handler class over a typed message, for dependency injection: derive from it, implement
/// <see cref="HandleAsync(T, MessageContext, CancellationToken)"/>, and register the class like any handler
/// (<c>AddRabbitMqConsumer&lt;OrderHandler&gt;("orders", ...)</c>). The body is deserialized with System.Text.Json first.
/// </summary>
/// <remarks>
/// A body that does not deserialize throws <see cref="MessageDeserializationException"/> before your code runs: a poison
/// message, dead-lettered at once with reason <see cref="MessageDeserializationException.ReasonCode"/>.
/// </remarks>
/// <typeparam name="T">The message type.</typeparam>
public abstract class JsonMessageHandler<T> : IIdempotentMessageHandler
{
    private readonly JsonBody<T> _body;

    /// <summary>Initializes a handler that deserializes with reflection.</summary>
    /// <param name="options">The serializer options; <see langword="null"/> for <see cref="JsonSerializerOptions.Web"/> (camelCase, case-insensitive).</param>
    [RequiresUnreferencedCode("Deserializes with reflection; pass a JsonTypeInfo<T> (System.Text.Json source generation) for trimming and native AOT.")]
    [RequiresDynamicCode("Deserializes with reflection; pass a JsonTypeInfo<T> (System.Text.Json source generation) for trimming and native AOT.")]
    protected JsonMessageHandler(JsonSerializerOptions? options = null) => _body = JsonBody<T>.FromOptions(options);

    /// <summary>Initializes a handler that deserializes with source-generated metadata.</summary>
    /// <param name="typeInfo">The type's JSON metadata, from a <see cref="System.Text.Json.Serialization.JsonSerializerContext"/>.</param>
    protected JsonMessageHandler(JsonTypeInfo<T> typeInfo) => _body = JsonBody<T>.FromTypeInfo(typeInfo);

    /// <summary>Applies the message's effects using <see cref="MessageContext.Transaction"/> (or the store's typed accessors).</summary>
    /// <param name="message">The deserialized message.</param>
    /// <param name="context">The message's context: key, raw message and the store transaction.</param>
    /// <param name="cancellationToken">Signals shutdown.</param>
    /// <returns>A task that completes when the effects are written (not yet committed).</returns>
    protected abstract ValueTask HandleAsync(T message, MessageContext context, CancellationToken cancellationToken);

    /// <inheritdoc/>
    public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(context);
        return HandleAsync(_body.Read(context), context, cancellationToken);
    }
}
