using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// The consumer channel's <c>basic.ack</c>s: committed deliveries that extend the run of settled tags from the channel's
/// first delivery go out as one <c>basic.ack(multiple: true)</c>; any other goes out on its own at once, never held back
/// behind a lower delivery still being processed.
/// </summary>
/// <remarks>
/// <para>
/// A multiple ack settles every unacknowledged delivery up to its tag, so it is sent only when every lower tag of the
/// channel is settled already (its own ack, nack or dead-letter was sent first) or is committed and acknowledged by it:
/// the tags from 1 up to <c>_through</c> are all settled, and a tag joins that run only once its frame was written.
/// Tags this consumer never settles (a channel shared with another consumer, or one that had deliveries before) stop the
/// run: acks then go one by one, and once more tags wait above the run than a prefetch window can explain, the run is
/// given up for good.
/// </para>
/// <para>
/// With automatic recovery the client continues tags across a new channel (it offsets them) and drops acks of the old
/// channel's tags, so the run goes on; deliveries of the old channel are redelivered by the broker either way.
/// </para>
/// </remarks>
internal sealed class RabbitMqAcknowledgements(IChannel channel, int prefetchCount)
{
    private readonly Lock _gate = new();

    // Serializes ack frames: two multiple acks sent out of order would ack a tag twice, which closes the channel.
    private readonly SemaphoreSlim _wire = new(1, 1);
    private readonly SortedSet<ulong> _settledAbove = [];
    private readonly SortedSet<ulong> _ready = [];
    private readonly int _giveUpAbove = (2 * prefetchCount) + 1024;
    private ulong _through;
    private bool _oneByOne;

    /// <summary>Gets how many <c>basic.ack</c> frames were sent (single and multiple).</summary>
    public long Frames { get; private set; }

    /// <summary>
    /// Acknowledges committed deliveries: those that extend the settled run in one <c>basic.ack(multiple: true)</c>, the
    /// rest one by one. Throws when the channel refuses a frame (the broker then redelivers, as a duplicate).
    /// </summary>
    /// <param name="tags">The delivery tags, each committed (or a duplicate of a committed message).</param>
    /// <returns>A task that completes when the frames were written.</returns>
    public async Task AckAsync(IReadOnlyList<ulong> tags)
    {
        if (tags.Count == 0)
        {
            return;
        }

        await _wire.WaitAsync().ConfigureAwait(false);
        try
        {
            ulong upTo = 0;
            ulong[] oneByOne;
            lock (_gate)
            {
                if (_oneByOne)
                {
                    oneByOne = [.. tags];
                }
                else
                {
                    foreach (var tag in tags)
                    {
                        _ready.Add(tag);
                    }

                    while (true)
                    {
                        var next = _through + 1;
                        if (_ready.Remove(next))
                        {
                            upTo = next;
                        }
                        else if (!_settledAbove.Remove(next))
                        {
                            break;
                        }

                        _through = next;
                    }

                    oneByOne = [.. _ready];
                    _ready.Clear();
                }
            }

            try
            {
                if (upTo > 0)
                {
                    Frames++;
                    await channel.BasicAckAsync(upTo, multiple: true, CancellationToken.None).ConfigureAwait(false);
                }

                foreach (var tag in oneByOne)
                {
                    Frames++;
                    await channel.BasicAckAsync(tag, multiple: false, CancellationToken.None).ConfigureAwait(false);
                }
            }
            finally
            {
                // Committed deliveries may join the run even when a frame failed (the channel is gone, and the broker
                // redelivers them as duplicates): a later multiple ack covering one of them acks only what committed.
                foreach (var tag in oneByOne)
                {
                    Settled(tag);
                }
            }
        }
        finally
        {
            _wire.Release();
        }
    }

    /// <summary>
    /// Records a delivery settled by a frame of its own (nack, dead-letter) that was written already; a delivery whose
    /// frame failed is not recorded, so no multiple ack ever covers it.
    /// </summary>
    /// <param name="tag">The delivery tag.</param>
    public void Settled(ulong tag)
    {
        lock (_gate)
        {
            if (_oneByOne || tag <= _through)
            {
                return;
            }

            if (tag != _through + 1)
            {
                _settledAbove.Add(tag);
                if (_settledAbove.Count > _giveUpAbove)
                {
                    // Some lower tag is never settled here (another consumer's, or one lost in a recovery).
                    _oneByOne = true;
                    _settledAbove.Clear();
                }

                return;
            }

            _through = tag;
            while (_settledAbove.Remove(_through + 1))
            {
                _through++;
            }
        }
    }
}
