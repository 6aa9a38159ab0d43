namespace Idempotency;

/// <summary>
/// A message's body could not be turned into the type its handler expects (malformed JSON, a JSON <c>null</c>, a value
/// that does not fit the type). The bytes will not change on redelivery, so this is a poison message: adapters
/// dead-letter it at once with reason <see cref="ReasonCode"/> instead of retrying it.
/// </summary>
/// <remarks>
/// Thrown by the typed handlers (<see cref="IdempotentHandler.Create{T}(Func{T, MessageContext, CancellationToken, ValueTask}, System.Text.Json.JsonSerializerOptions?)"/>,
/// <see cref="JsonMessageHandler{T}"/>) before your code runs, so nothing was written. Throw it from your own handler for a body
/// you cannot parse in another format.
/// </remarks>
public sealed class MessageDeserializationException : IdempotencyException
{
    /// <summary>The dead-letter reason code for a body that does not deserialize: <c>deserialization_failed</c>.</summary>
    public const string ReasonCode = "deserialization_failed";

    /// <summary>Initializes a new instance.</summary>
    /// <param name="targetType">The type the body was to become.</param>
    /// <param name="key">The message's idempotency key, if known.</param>
    /// <param name="innerException">The deserializer's exception, if any.</param>
    public MessageDeserializationException(Type targetType, string? key, Exception? innerException = null)
        : base(Describe(targetType, key, innerException), innerException)
    {
        TargetType = targetType;
        Key = key;
    }

    /// <summary>Gets the type the body was to become.</summary>
    public Type TargetType { get; }

    /// <summary>Gets the message's idempotency key, if known.</summary>
    public string? Key { get; }

    /// <inheritdoc/>
    /// <value>Always <see langword="false"/>: the same bytes fail the same way on every attempt.</value>
    public override bool IsTransient => false;

    private static string Describe(Type targetType, string? key, Exception? inner)
    {
        ArgumentNullException.ThrowIfNull(targetType);
        var what = inner is null ? "the body is JSON null" : inner.Message;
        return $"The body of message '{key}' is not a valid {targetType.Name}: {what}";
    }
}
