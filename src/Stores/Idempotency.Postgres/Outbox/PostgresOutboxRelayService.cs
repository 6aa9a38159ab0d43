using Microsoft.Extensions.Hosting;

namespace Idempotency.Postgres.Outbox;

/// <summary>Runs a <see cref="PostgresOutboxRelay"/> for as long as the host runs.</summary>
/// <param name="relay">The relay.</param>
internal sealed class PostgresOutboxRelayService(PostgresOutboxRelay relay) : BackgroundService
{
    /// <inheritdoc/>
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => relay.RunAsync(stoppingToken);
}
