using Idempotency.Delivery;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// The consumer's <c>basic.consume</c> on its channel: subscribes, cancels (stopping), and pauses while the store is down
/// or misconfigured (<c>basic.cancel</c> until the engine's store gate opens, then <c>basic.consume</c> again), and tells
/// the consumer when the broker cancelled it (the queue was deleted, or a node holding it went away).
/// </summary>
internal sealed class RabbitMqSubscription(
    IChannel channel,
    RabbitMqIdempotencyOptions options,
    AsyncEventHandler<BasicDeliverEventArgs> received,
    Action<string> cancelledByBroker,
    ILogger logger,
    CancellationToken stopping)
    : IDisposable
{
    private readonly SemaphoreSlim _consumeLock = new(1, 1);
    private readonly Lock _pauseGate = new();
    private string? _consumerTag;
    private Task? _pauseTask;
    private int _paused;

    /// <summary>Gets a value indicating whether consumption is paused for the store.</summary>
    public bool IsPaused => Volatile.Read(ref _paused) == 1;

    /// <summary>Gets a value indicating whether a <c>basic.consume</c> is active (not cancelled by us or the broker).</summary>
    public bool IsSubscribed => Volatile.Read(ref _consumerTag) is not null;

    /// <summary>Subscribes to the queue, unless subscribed or stopping.</summary>
    /// <param name="cancellationToken">Cancels the subscribe.</param>
    /// <param name="consumerTag">
    /// The tag to subscribe under: a consumer the broker cancelled subscribes again under its old tag, which replaces the
    /// client's record of it (automatic recovery would otherwise re-register the old consumer beside the new one).
    /// </param>
    public async Task SubscribeAsync(CancellationToken cancellationToken, string? consumerTag = null)
    {
        await _consumeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_consumerTag is not null || stopping.IsCancellationRequested)
            {
                return;
            }

            var consumer = new AsyncEventingBasicConsumer(channel);
            consumer.ReceivedAsync += received;
            consumer.UnregisteredAsync += OnUnregisteredAsync;
            _consumerTag = await channel.BasicConsumeAsync(
                options.Queue,
                autoAck: false,
                consumerTag: consumerTag ?? options.ConsumerTag ?? string.Empty,
                noLocal: false,
                exclusive: false,
                arguments: null,
                consumer: consumer,
                cancellationToken: cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _consumeLock.Release();
        }
    }

    /// <summary>Cancels the subscription; a closed channel delivers nothing more either way.</summary>
    public async Task UnsubscribeAsync()
    {
        await _consumeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            if (Interlocked.Exchange(ref _consumerTag, null) is { } tag)
            {
                if (channel.IsOpen)
                {
                    await channel.BasicCancelAsync(tag, noWait: false).ConfigureAwait(false);
                }
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            Log.SettleFailed(logger, exception, 0, options.Queue);
        }
        finally
        {
            _consumeLock.Release();
        }
    }

    /// <summary>
    /// Drops the client's record of a consumer this subscription no longer wants (automatic recovery re-registers every
    /// consumer it recorded and forgets one only on the client's own <c>basic.cancel</c>); the broker ignores a cancel for
    /// a tag it does not know.
    /// </summary>
    /// <param name="consumerTag">The consumer tag.</param>
    /// <returns>A task that completes when the cancel was sent, or could not be (a closed channel delivers nothing).</returns>
    public async Task ForgetAsync(string consumerTag)
    {
        try
        {
            if (channel.IsOpen)
            {
                await channel.BasicCancelAsync(consumerTag, noWait: true).ConfigureAwait(false);
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            Log.SettleFailed(logger, exception, 0, options.Queue);
        }
    }

    /// <summary>Pauses until <paramref name="gate"/> opens (once, however many lanes ask).</summary>
    public void Pause(StoreGate gate, TimeSpan retryDelay, Func<TimeSpan, ValueTask> delay)
    {
        if (Interlocked.CompareExchange(ref _paused, 1, 0) != 0)
        {
            return;
        }

        Log.Paused(logger, options.Queue);
        lock (_pauseGate)
        {
            _pauseTask = Task.Run(() => PauseUntilStoreAnswersAsync(gate, retryDelay, delay), CancellationToken.None);
        }
    }

    /// <summary>Waits for a pause in progress to end (stopping ends it).</summary>
    public Task WaitPauseAsync()
    {
        lock (_pauseGate)
        {
            return _pauseTask ?? Task.CompletedTask;
        }
    }

    /// <inheritdoc/>
    public void Dispose() => _consumeLock.Dispose();

    /// <summary>
    /// A consumer was unregistered: by our own <c>basic.cancel</c> (which clears the tag first), or by the broker's, which
    /// leaves the tag current. The broker's is reported; the lock is not taken, since our own cancel holds it while it
    /// waits for this very notification.
    /// </summary>
    private Task OnUnregisteredAsync(object sender, ConsumerEventArgs args)
    {
        // A channel shutdown (a connection loss) unregisters consumers too, and automatic recovery registers them again
        // under the same tag: only a cancel with the channel up is the broker's basic.cancel.
        if (sender is AsyncDefaultBasicConsumer { ShutdownReason: not null } || !channel.IsOpen)
        {
            return Task.CompletedTask;
        }

        var current = Volatile.Read(ref _consumerTag);
        if (current is not null && args.ConsumerTags.Contains(current, StringComparer.Ordinal)
            && Interlocked.CompareExchange(ref _consumerTag, null, current) == current)
        {
            cancelledByBroker(current);
        }

        return Task.CompletedTask;
    }

    private async Task PauseUntilStoreAnswersAsync(StoreGate gate, TimeSpan retryDelay, Func<TimeSpan, ValueTask> delay)
    {
        await UnsubscribeAsync().ConfigureAwait(false);
        var probes = 0;
        while (!stopping.IsCancellationRequested)
        {
            probes++;
            try
            {
                // One probe loop per consumer, in the gate: it opens when the store answers and is set up.
                await gate.WaitAsync(stopping).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            Volatile.Write(ref _paused, 0);
            try
            {
                await SubscribeAsync(stopping).ConfigureAwait(false);
                Log.Resumed(logger, options.Queue, probes);
                return;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                // The channel may be recovering; keep the pause and try again.
                Volatile.Write(ref _paused, 1);
                Log.ResumeFailed(logger, exception, options.Queue);
                await delay(retryDelay).ConfigureAwait(false);
            }
        }
    }
}
