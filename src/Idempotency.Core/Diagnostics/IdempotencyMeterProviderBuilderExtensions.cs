using Idempotency.Diagnostics;

namespace OpenTelemetry.Metrics;

/// <summary>Subscribes OpenTelemetry to this library's metrics.</summary>
public static class IdempotencyMeterProviderBuilderExtensions
{
    /// <summary>Adds the <see cref="IdempotencyTelemetry.MeterName"/> meter: message counters by outcome, handler, store and lag histograms, the in-flight gauge.</summary>
    /// <param name="builder">The meter provider builder.</param>
    /// <returns>The builder.</returns>
    public static MeterProviderBuilder AddIdempotencyInstrumentation(this MeterProviderBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.AddMeter(IdempotencyTelemetry.MeterName);
    }
}
