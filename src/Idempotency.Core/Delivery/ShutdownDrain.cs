using Microsoft.Extensions.Logging;

namespace Idempotency.Delivery;

/// <summary>
/// The graceful-stop rule of every consumer, in one place. Once a consumer takes no more messages, its in-flight work
/// gets <see cref="IdempotentConsumerOptions.ShutdownTimeout"/> to settle; then it is cut (cancelled: its transaction
/// rolls back and the message is redelivered, never acknowledged), and the drain waits for the cut work to unwind, so
/// nothing settles behind the adapter's back after the drain returns. An abort token (the caller's stop token) cuts at
/// once. Adapters only say what their in-flight work is and how to cut it.
/// </summary>
internal sealed class ShutdownDrain
{
    private readonly string _consumer;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;

    /// <summary>Initializes a new instance of the <see cref="ShutdownDrain"/> class.</summary>
    /// <param name="consumer">What the logs name: the consumer (queue, topic or handler).</param>
    /// <param name="time">The clock of the timeout.</param>
    /// <param name="logger">Where a cut is reported.</param>
    public ShutdownDrain(string consumer, TimeProvider time, ILogger logger)
    {
        _consumer = consumer;
        _time = time;
        _logger = logger;
    }

    /// <summary>Waits for <paramref name="inFlight"/> to settle within <paramref name="timeout"/>; otherwise cuts it and waits for it to unwind.</summary>
    /// <param name="inFlight">The in-flight work (its faults are the adapter's to report, not thrown here).</param>
    /// <param name="timeout">How long in-flight work may take; zero cuts at once.</param>
    /// <param name="cut">Cancels the in-flight work.</param>
    /// <param name="abort">Cuts the wait short.</param>
    /// <returns><see langword="true"/> when the work settled without being cut.</returns>
    public async Task<bool> DrainAsync(Task inFlight, TimeSpan timeout, Action cut, CancellationToken abort)
    {
        ArgumentNullException.ThrowIfNull(inFlight);
        ArgumentNullException.ThrowIfNull(cut);
        if (!inFlight.IsCompleted && timeout > TimeSpan.Zero && !abort.IsCancellationRequested)
        {
            await inFlight.WaitAsync(timeout, _time, abort).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        }

        if (inFlight.IsCompleted)
        {
            return true;
        }

        EngineLog.DrainCut(_logger, _consumer, abort.IsCancellationRequested ? TimeSpan.Zero : timeout);
        cut();
        await inFlight.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        return false;
    }

    /// <summary>
    /// The blocking form of <see cref="DrainAsync"/>, for a caller that must return before it goes on (librdkafka's
    /// rebalance callback). The unwind of cut work is bounded by <paramref name="unwindLimit"/>: a commit already sent is
    /// awaited by the store, but a callback must not block for ever.
    /// </summary>
    /// <param name="inFlight">The in-flight work.</param>
    /// <param name="timeout">How long in-flight work may take; zero cuts at once.</param>
    /// <param name="cut">Cancels the in-flight work.</param>
    /// <param name="abort">Cuts the wait short.</param>
    /// <param name="unwindLimit">How long to wait for cut work to unwind.</param>
    /// <returns><see langword="true"/> when the work settled without being cut.</returns>
    public bool Drain(Task inFlight, TimeSpan timeout, Action cut, CancellationToken abort, TimeSpan unwindLimit)
    {
        ArgumentNullException.ThrowIfNull(inFlight);
        ArgumentNullException.ThrowIfNull(cut);
        if (Wait(inFlight, timeout, abort))
        {
            return true;
        }

        EngineLog.DrainCut(_logger, _consumer, abort.IsCancellationRequested ? TimeSpan.Zero : timeout);
        cut();
        Wait(inFlight, unwindLimit, CancellationToken.None);
        return false;
    }

    private bool Wait(Task task, TimeSpan timeout, CancellationToken abort)
    {
        if (task.IsCompleted || timeout <= TimeSpan.Zero || abort.IsCancellationRequested)
        {
            return task.IsCompleted;
        }

        // A delay on the TimeProvider (not Task.Wait(timeout)) so that tests can drive the clock; the abort ends it early.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(abort);
        var delay = Task.Delay(timeout, _time, stop.Token);
        Task.WaitAny(task, delay);
        stop.Cancel();
        return task.IsCompleted;
    }
}
