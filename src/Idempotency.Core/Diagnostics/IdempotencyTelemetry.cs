using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Idempotency.Diagnostics;

/// <summary>The names under which this library publishes metrics and traces.</summary>
/// <remarks>Subscribe with OpenTelemetry's <c>AddMeter(IdempotencyTelemetry.MeterName)</c> and <c>AddSource(IdempotencyTelemetry.ActivitySourceName)</c>.</remarks>
public static class IdempotencyTelemetry
{
    /// <summary>The name of the <see cref="Meter"/>.</summary>
    public const string MeterName = "Idempotency";

    /// <summary>The name of the <see cref="ActivitySource"/>.</summary>
    public const string ActivitySourceName = "Idempotency";

    private static readonly string Version = typeof(IdempotencyTelemetry).Assembly.GetName().Version?.ToString(3) ?? "0.0.0";

    /// <summary>Gets the library's activity source; processing spans are its <c>process</c> activities.</summary>
    public static ActivitySource ActivitySource { get; } = new(ActivitySourceName, Version);

    /// <summary>Gets the library's meter; the store and broker packages add their instruments to it.</summary>
    public static Meter Meter { get; } = new(MeterName, Version);
}
