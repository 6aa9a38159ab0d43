using Idempotency.Storage;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Idempotency.Health;

/// <summary>
/// The library's health checks as registrations for the health-check service your application already runs
/// (<c>Microsoft.Extensions.Diagnostics.HealthChecks</c>, part of ASP.NET Core):
/// <c>services.AddHealthChecks().Add(IdempotencyHealthChecks.StoreCheck()).Add(IdempotencyHealthChecks.ConsumersCheck())</c>.
/// </summary>
/// <remarks>Both resolve their services from the container that <c>AddIdempotency()</c> filled.</remarks>
public static class IdempotencyHealthChecks
{
    /// <summary>The name of the store check.</summary>
    public const string StoreCheckName = "idempotency-store";

    /// <summary>The name of the consumers check.</summary>
    public const string ConsumersCheckName = "idempotency-consumers";

    /// <summary>Creates the store check (tags <c>idempotency</c>, <c>ready</c>): the store answers a ping.</summary>
    /// <returns>The registration to add to the health-check builder.</returns>
    public static HealthCheckRegistration StoreCheck() =>
        new(StoreCheckName, sp => new StoreHealthCheck(sp.GetRequiredService<IIdempotencyStore>()), HealthStatus.Unhealthy, ["idempotency", "ready"]);

    /// <summary>
    /// Creates the consumers check (tags <c>idempotency</c>, <c>live</c>): every consumer loop is alive and has beaten
    /// within <paramref name="stalledAfter"/>; a loop paused on purpose (store down) is degraded.
    /// </summary>
    /// <param name="stalledAfter">How long a consumer loop may go without a heartbeat before it is reported unhealthy; 1 minute by default.</param>
    /// <returns>The registration to add to the health-check builder.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="stalledAfter"/> is not positive.</exception>
    public static HealthCheckRegistration ConsumersCheck(TimeSpan? stalledAfter = null)
    {
        var threshold = stalledAfter ?? TimeSpan.FromMinutes(1);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(threshold, TimeSpan.Zero, nameof(stalledAfter));
        return new(
            ConsumersCheckName,
            sp => new ConsumerHealthCheck(sp.GetRequiredService<ConsumerHealthRegistry>(), sp.GetRequiredService<TimeProvider>(), threshold),
            HealthStatus.Unhealthy,
            ["idempotency", "live"]);
    }
}
