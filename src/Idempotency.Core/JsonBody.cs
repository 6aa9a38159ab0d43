using System.Diagnostics.CodeAnalysis;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Idempotency;

/// <summary>Turns a message body into a <typeparamref name="T"/> with System.Text.Json, or throws <see cref="MessageDeserializationException"/>.</summary>
/// <typeparam name="T">The message type.</typeparam>
internal sealed class JsonBody<T>
{
    private readonly JsonTypeInfo<T>? _typeInfo;
    private readonly JsonSerializerOptions? _options;

    private JsonBody(JsonTypeInfo<T>? typeInfo, JsonSerializerOptions? options)
    {
        _typeInfo = typeInfo;
        _options = options;
    }

    [RequiresUnreferencedCode("Deserializes with reflection; use the JsonTypeInfo<T> overload for trimming and native AOT.")]
    [RequiresDynamicCode("Deserializes with reflection; use the JsonTypeInfo<T> overload for trimming and native AOT.")]
    public static JsonBody<T> FromOptions(JsonSerializerOptions? options) => new(null, options ?? JsonSerializerOptions.Web);

    public static JsonBody<T> FromTypeInfo(JsonTypeInfo<T> typeInfo)
    {
        ArgumentNullException.ThrowIfNull(typeInfo);
        return new(typeInfo, null);
    }

    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "Only the options path reaches reflection, and FromOptions carries the warning.")]
    [UnconditionalSuppressMessage("AOT", "IL3050", Justification = "Only the options path reaches reflection, and FromOptions carries the warning.")]
    public T Read(MessageContext context)
    {
        T? value;
        try
        {
            value = _typeInfo is not null
                ? JsonSerializer.Deserialize(context.Body.Span, _typeInfo)
                : JsonSerializer.Deserialize<T>(context.Body.Span, _options);
        }
        catch (JsonException exception)
        {
            throw new MessageDeserializationException(typeof(T), context.Key, exception);
        }

        return value ?? throw new MessageDeserializationException(typeof(T), context.Key);
    }
}
