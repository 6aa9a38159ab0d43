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

    /// <inheritdoc/>
    protected override Task ExecuteAsync(CancellationToken stoppingToken) => Worker.RunAsync(stoppingToken);
}
