using RabbitMQ.Client;

namespace Idempotency.Benchmarks.RabbitMQ;

/// <summary>
/// The acks of the hand-written batch consumer (one channel, several workers committing batches out of order): a
/// committed batch that extends the run of settled tags from the channel's first delivery goes out as one
/// <c>basic.ack(multiple: true)</c> of its highest tag in the run, the rest of it one by one at once. A multiple ack is
/// only ever sent for a tag not acknowledged yet, and frames go out one at a time, so no tag is acknowledged twice.
/// </summary>
/// <remarks>Every delivery of the channel is settled by this class (the benchmark's channel has no other consumer).</remarks>
internal sealed class HandWrittenAcks(IChannel channel)
{
    private readonly SemaphoreSlim _wire = new(1, 1);
    private readonly SortedSet<ulong> _settledAbove = [];
    private ulong _through;

    /// <summary>Acknowledges the delivery tags of one committed batch.</summary>
    /// <param name="tags">The batch's delivery tags.</param>
    /// <returns>A task that completes when the frames were written.</returns>
    public async Task AckAsync(IReadOnlyCollection<ulong> tags)
    {
        await _wire.WaitAsync();
        try
        {
            var batch = tags.ToHashSet();
            _settledAbove.UnionWith(batch);
            ulong upTo = 0;
            while (_settledAbove.Remove(_through + 1))
            {
                _through++;
                if (batch.Remove(_through))
                {
                    upTo = _through;
                }
            }

            if (upTo > 0)
            {
                await channel.BasicAckAsync(upTo, multiple: true);
            }

            foreach (var tag in batch)
            {
                await channel.BasicAckAsync(tag, multiple: false);
            }
        }
        finally
        {
            _wire.Release();
        }
    }
}
