using System.Threading.Channels;

namespace Idempotency.Delivery;

/// <summary>
/// Natural batching over a lane's intake buffer, the same for every adapter: take what is ready (up to the batch size),
/// and only when <c>BatchMaxWait</c> is set linger that long for more.
/// </summary>
internal static class ReadyBatch
{
    /// <summary>Adds the ready items of <paramref name="reader"/> to <paramref name="batch"/>, lingering up to <paramref name="maxWait"/> for more once it has one.</summary>
    /// <typeparam name="T">The lane's item.</typeparam>
    /// <param name="reader">The lane's buffer.</param>
    /// <param name="batch">The batch to fill (may already hold items).</param>
    /// <param name="maxSize">The most items in one batch.</param>
    /// <param name="maxWait">How long to linger for a fuller batch; zero takes only what is ready.</param>
    /// <param name="timeProvider">The clock of the linger.</param>
    /// <param name="cancellationToken">Ends the linger early (stopping): the batch keeps what it has.</param>
    /// <returns>A task that completes when the batch is full, the linger is over, or nothing was ready.</returns>
    public static async ValueTask FillAsync<T>(ChannelReader<T> reader, List<T> batch, int maxSize, TimeSpan maxWait, TimeProvider timeProvider, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(reader);
        ArgumentNullException.ThrowIfNull(batch);
        while (batch.Count < maxSize && reader.TryRead(out var item))
        {
            batch.Add(item);
        }

        if (batch.Count == 0 || batch.Count >= maxSize || maxWait <= TimeSpan.Zero || cancellationToken.IsCancellationRequested)
        {
            return;
        }

        using var linger = new CancellationTokenSource(maxWait, timeProvider);
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(linger.Token, cancellationToken);
        try
        {
            while (batch.Count < maxSize && await reader.WaitToReadAsync(wait.Token).ConfigureAwait(false))
            {
                while (batch.Count < maxSize && reader.TryRead(out var item))
                {
                    batch.Add(item);
                }
            }
        }
        catch (OperationCanceledException) when (wait.IsCancellationRequested)
        {
            // The linger is over (or the lane stops): process what arrived.
        }
    }
}
