using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Idempotency.Health;

/// <summary>Reports unhealthy when a consumer loop stopped or has not beaten within the threshold; degraded while one is paused.</summary>
/// <param name="registry">The registry consumer loops report to.</param>
/// <param name="time">The clock.</param>
/// <param name="stalledAfter">How long without a beat counts as stalled.</param>
public sealed class ConsumerHealthCheck(ConsumerHealthRegistry registry, TimeProvider time, TimeSpan stalledAfter) : IHealthCheck
{
    /// <inheritdoc/>
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var now = time.GetUtcNow();
        var data = new Dictionary<string, object>(StringComparer.Ordinal);
        var unhealthy = new List<string>();
        var paused = new List<string>();
        foreach (var consumer in registry.Consumers)
        {
            var silence = now - consumer.LastBeat;
            data[consumer.Name] = $"{consumer.State}, last beat {silence.TotalSeconds:F1}s ago{(consumer.Detail is null ? string.Empty : ": " + consumer.Detail)}";
            if (consumer.State is ConsumerState.Stopped or ConsumerState.Misconfigured || (consumer.State == ConsumerState.Running && silence > stalledAfter))
            {
                unhealthy.Add($"{consumer.Name} ({data[consumer.Name]})");
            }
            else if (consumer.State == ConsumerState.Paused)
            {
                paused.Add(consumer.Name);
            }
        }

        var result = unhealthy.Count > 0
            ? HealthCheckResult.Unhealthy($"Stopped, stalled or misconfigured: {string.Join("; ", unhealthy)}.", data: data)
            : paused.Count > 0
                ? HealthCheckResult.Degraded($"Paused: {string.Join(", ", paused)}.", data: data)
                : HealthCheckResult.Healthy($"{data.Count} consumer loop(s) alive.", data);
        return Task.FromResult(result);
    }
}
