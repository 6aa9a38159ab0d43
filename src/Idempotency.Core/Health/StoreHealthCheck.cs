using Idempotency.Storage;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Idempotency.Health;

/// <summary>Reports whether the idempotency store answers.</summary>
/// <param name="store">The store.</param>
public sealed class StoreHealthCheck(IIdempotencyStore store) : IHealthCheck
{
    /// <inheritdoc/>
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        await store.PingAsync(cancellationToken).ConfigureAwait(false)
            ? HealthCheckResult.Healthy($"The {store.Name} store answers.")
            : HealthCheckResult.Unhealthy($"The {store.Name} store does not answer; consumers are paused until it does.");
}
