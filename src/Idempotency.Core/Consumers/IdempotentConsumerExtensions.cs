namespace Idempotency;

/// <summary>Runs an <see cref="IIdempotentConsumer"/> in the shape of a loop.</summary>
public static class IdempotentConsumerExtensions
{
    /// <summary>
    /// Starts the consumer, runs it until <paramref name="cancellationToken"/> is cancelled (or the consumer stops on its
    /// own), then stops it, draining in-flight messages. Cancelled while the consumer is still starting, it stops the
    /// consumer and completes the same way.
    /// </summary>
    /// <param name="consumer">The consumer.</param>
    /// <param name="cancellationToken">Ends the run.</param>
    /// <returns>A task that completes when the consumer has stopped; it faults if the consumer failed.</returns>
    public static async Task RunAsync(this IIdempotentConsumer consumer, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(consumer);
        try
        {
            await consumer.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Asked to stop while still starting: stop what did start, and end as a run asked to stop does.
            await consumer.StopAsync(CancellationToken.None).ConfigureAwait(false);
            return;
        }

        try
        {
            await consumer.Completion.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Asked to stop: drain below.
        }
        finally
        {
            await consumer.StopAsync(CancellationToken.None).ConfigureAwait(false);
        }

        await consumer.Completion.ConfigureAwait(false);
    }
}
