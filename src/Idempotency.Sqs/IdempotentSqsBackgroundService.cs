using Microsoft.Extensions.Hosting;

namespace Idempotency.Sqs;

/// <summary>The hosted-service form of an <see cref="IdempotentSqsWorker"/>: runs it for the host's lifetime and stops it gracefully (draining within its shutdown timeout).</summary>
/// <remarks>Usable without DI (<c>new IdempotentSqsBackgroundService(worker)</c> then <c>StartAsync</c>/<c>StopAsync</c>). Give the host a shutdown timeout longer than <see cref="IdempotentConsumerOptions.ShutdownTimeout"/>.</remarks>
public sealed class IdempotentSqsBackgroundService : BackgroundService
{
    /// <summary>Creates the hosted service.</summary>
    /// <param name="worker">The worker to run.</param>
    /// <exception cref="ArgumentNullException"><paramref name="worker"/> is null.</exception>
    public IdempotentSqsBackgroundService(IdempotentSqsWorker worker)
    {
        ArgumentNullException.ThrowIfNull(worker);
        Worker = worker;
    }

    /// <summary>Gets the worker.</summary>
    public IdempotentSqsWorker Worker { get; }

    /// <summary>
    /// Checks the worker's queue and dead-letter queue, then starts running the worker in the background. The check runs
    /// here, before the host finishes starting, so a queue that does not exist fails the host's start instead of a
    /// worker that runs and fails every receive in the background.
    /// </summary>
    /// <param name="cancellationToken">Cancels starting.</param>
    /// <returns>A task that completes when the worker runs.</returns>
    /// <exception cref="InvalidOperationException">A queue does not exist or may not be used; the message names the setting.</exception>
    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        await Worker.CheckQueuesAsync(cancellationToken).ConfigureAwait(false);
        await base.StartAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => Worker.RunAsync(stoppingToken);
}
