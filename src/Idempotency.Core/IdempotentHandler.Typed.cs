using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Idempotency;

public static partial class IdempotentHandler
{
    private const string ReflectionWarning = "Deserializes with reflection; use the JsonTypeInfo<T> overload (System.Text.Json source generation) for trimming and native AOT.";

    /// <summary>
    /// Wraps a delegate over a typed message: the body is deserialized from JSON (System.Text.Json, <see cref="JsonSerializerOptions.Web"/>
    /// unless <paramref name="options"/> is given) before <paramref name="handle"/> runs.
    /// </summary>
    /// <remarks>
    /// A body that is not valid JSON for <typeparamref name="T"/> (or is JSON <c>null</c>) throws <see cref="MessageDeserializationException"/>
    /// before your code runs: a poison message, dead-lettered at once with reason <see cref="MessageDeserializationException.ReasonCode"/>.
    /// </remarks>
    /// <typeparam name="T">The message type.</typeparam>
    /// <param name="handle">The handler body: the message, its context (key, transaction) and the cancellation token.</param>
    /// <param name="options">The serializer options; <see langword="null"/> for <see cref="JsonSerializerOptions.Web"/> (camelCase, case-insensitive).</param>
    /// <returns>The handler.</returns>
    [RequiresUnreferencedCode(ReflectionWarning)]
    [RequiresDynamicCode(ReflectionWarning)]
    public static IIdempotentMessageHandler Create<T>(Func<T, MessageContext, CancellationToken, ValueTask> handle, JsonSerializerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(handle);
        return new TypedDelegateHandler<T>(JsonBody<T>.FromOptions(options), handle);
    }

    /// <summary>
    /// Wraps a delegate over a typed message deserialized with source-generated metadata (trimming- and AOT-safe):
    /// <c>IdempotentHandler.Create(handle, MyJsonContext.Default.Order)</c>.
    /// </summary>
    /// <remarks>A body that does not deserialize throws <see cref="MessageDeserializationException"/> before your code runs.</remarks>
    /// <typeparam name="T">The message type.</typeparam>
    /// <param name="handle">The handler body.</param>
    /// <param name="typeInfo">The type's JSON metadata, from a <see cref="System.Text.Json.Serialization.JsonSerializerContext"/>.</param>
    /// <returns>The handler.</returns>
    public static IIdempotentMessageHandler Create<T>(Func<T, MessageContext, CancellationToken, ValueTask> handle, JsonTypeInfo<T> typeInfo)
    {
        ArgumentNullException.ThrowIfNull(handle);
        return new TypedDelegateHandler<T>(JsonBody<T>.FromTypeInfo(typeInfo), handle);
    }

    /// <summary>
    /// Wraps a set-based batch delegate as a handler on its own: a single message (or the isolation of a failed batch)
    /// runs the same delegate with a batch of one, so there is no second, per-message code path to write.
    /// </summary>
    /// <param name="handleBatch">Handles all new messages of a batch with the batch's shared transaction.</param>
    /// <returns>The handler.</returns>
    public static IIdempotentBatchHandler CreateBatch(Func<BatchContext, CancellationToken, ValueTask> handleBatch)
    {
        ArgumentNullException.ThrowIfNull(handleBatch);
        return new BatchOnlyDelegateHandler(handleBatch);
    }

    /// <summary>
    /// Wraps a set-based batch delegate over typed messages: every body of the batch is deserialized from JSON first
    /// (<see cref="JsonSerializerOptions.Web"/> unless <paramref name="options"/> is given). A single message is a batch of one.
    /// </summary>
    /// <remarks>
    /// A body that does not deserialize fails the batch with <see cref="MessageDeserializationException"/>; the pipeline then
    /// isolates it (the others commit, that one fails as a poison message).
    /// </remarks>
    /// <typeparam name="T">The message type.</typeparam>
    /// <param name="handleBatch">Handles the new messages of a batch, each with its context, in delivery order.</param>
    /// <param name="options">The serializer options; <see langword="null"/> for <see cref="JsonSerializerOptions.Web"/>.</param>
    /// <returns>The handler.</returns>
    [RequiresUnreferencedCode(ReflectionWarning)]
    [RequiresDynamicCode(ReflectionWarning)]
    public static IIdempotentBatchHandler CreateBatch<T>(Func<IReadOnlyList<(T Message, MessageContext Context)>, BatchContext, CancellationToken, ValueTask> handleBatch, JsonSerializerOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(handleBatch);
        return new TypedBatchHandler<T>(JsonBody<T>.FromOptions(options), handleBatch);
    }

    /// <summary>Wraps a set-based batch delegate over typed messages deserialized with source-generated metadata.</summary>
    /// <remarks>A body that does not deserialize fails with <see cref="MessageDeserializationException"/> and is isolated by the pipeline.</remarks>
    /// <typeparam name="T">The message type.</typeparam>
    /// <param name="handleBatch">Handles the new messages of a batch, each with its context, in delivery order.</param>
    /// <param name="typeInfo">The type's JSON metadata, from a <see cref="System.Text.Json.Serialization.JsonSerializerContext"/>.</param>
    /// <returns>The handler.</returns>
    public static IIdempotentBatchHandler CreateBatch<T>(Func<IReadOnlyList<(T Message, MessageContext Context)>, BatchContext, CancellationToken, ValueTask> handleBatch, JsonTypeInfo<T> typeInfo)
    {
        ArgumentNullException.ThrowIfNull(handleBatch);
        return new TypedBatchHandler<T>(JsonBody<T>.FromTypeInfo(typeInfo), handleBatch);
    }

    private sealed class TypedBatchHandler<T>(JsonBody<T> body, Func<IReadOnlyList<(T Message, MessageContext Context)>, BatchContext, CancellationToken, ValueTask> handleBatch) : IIdempotentBatchHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            ArgumentNullException.ThrowIfNull(context);
            return handleBatch([(body.Read(context), context)], new BatchContext([context], context.Transaction, context.HandlerName), cancellationToken);
        }

        public ValueTask HandleBatchAsync(BatchContext batch, CancellationToken cancellationToken)
        {
            ArgumentNullException.ThrowIfNull(batch);
            var messages = new (T Message, MessageContext Context)[batch.Messages.Count];
            for (var i = 0; i < messages.Length; i++)
            {
                messages[i] = (body.Read(batch.Messages[i]), batch.Messages[i]);
            }

            return handleBatch(messages, batch, cancellationToken);
        }
    }

    private sealed class TypedDelegateHandler<T>(JsonBody<T> body, Func<T, MessageContext, CancellationToken, ValueTask> handle) : IIdempotentMessageHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            ArgumentNullException.ThrowIfNull(context);
            return handle(body.Read(context), context, cancellationToken);
        }
    }

    private sealed class BatchOnlyDelegateHandler(Func<BatchContext, CancellationToken, ValueTask> handleBatch) : IIdempotentBatchHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            ArgumentNullException.ThrowIfNull(context);
            return handleBatch(new BatchContext([context], context.Transaction, context.HandlerName), cancellationToken);
        }

        public ValueTask HandleBatchAsync(BatchContext batch, CancellationToken cancellationToken) => handleBatch(batch, cancellationToken);
    }
}
