using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Idempotency.Postgres.Retention;

/// <summary>Runs <see cref="PostgresRetentionPruner"/> every <see cref="PostgresRetentionOptions.Interval"/> for as long as the host runs.</summary>
/// <param name="pruner">The pruner.</param>
/// <param name="timeProvider">The clock the interval is measured on.</param>
/// <param name="logger">The logger.</param>
internal sealed partial class PostgresRetentionService(PostgresRetentionPruner pruner, TimeProvider timeProvider, ILogger<PostgresRetentionService> logger) : BackgroundService
{
    /// <inheritdoc/>
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await pruner.PruneOnceAsync(stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // A failed run (the database is down, say) must not end the service: the next interval tries again.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                LogPruneFailed(logger, exception);
            }

            try
            {
                await Task.Delay(pruner.Options.Interval, timeProvider, stoppingToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    [LoggerMessage(EventId = 6001, Level = LogLevel.Warning, Message = "Pruning expired idempotency keys failed; retrying at the next interval")]
    private static partial void LogPruneFailed(ILogger logger, Exception exception);
}
