using Idempotency.Diagnostics;

namespace OpenTelemetry.Trace;

/// <summary>Subscribes OpenTelemetry to this library's spans.</summary>
public static class IdempotencyTracerProviderBuilderExtensions
{
    /// <summary>Adds the <see cref="IdempotencyTelemetry.ActivitySourceName"/> source: one <c>process</c> span per message, continuing the producer's W3C trace context.</summary>
    /// <param name="builder">The tracer provider builder.</param>
    /// <returns>The builder.</returns>
    public static TracerProviderBuilder AddIdempotencyInstrumentation(this TracerProviderBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.AddSource(IdempotencyTelemetry.ActivitySourceName);
    }
}
