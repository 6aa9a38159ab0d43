using Idempotency.Health;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;

namespace Idempotency.Sqs;

/// <summary>
/// Pauses every poller of a worker while the store is unreachable: the first store failure closes the gate and
/// starts one ping loop (with the store-unavailable backoff); the gate opens when <see cref="IIdempotencyStore.PingAsync"/> answers.
/// </summary>
internal sealed class StoreGate
{
    private readonly IIdempotencyStore _store;
    private readonly BackoffOptions _backoff;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly string _queue;
    private readonly SqsWorkerStatistics _statistics;
    private readonly ConsumerHeartbeat? _health;
    private readonly CancellationToken _stopping;
    private readonly Lock _lock = new();
    private TaskCompletionSource? _closed;
    private int _outages;

    public StoreGate(IIdempotencyStore store, BackoffOptions backoff, TimeProvider time, ILogger logger, string queue, SqsWorkerStatistics statistics, ConsumerHeartbeat? health, CancellationToken stopping)
    {
        _store = store;
        _backoff = backoff;
        _time = time;
        _logger = logger;
        _queue = queue;
        _statistics = statistics;
        _health = health;
        _stopping = stopping;
    }

    public bool IsClosed => Volatile.Read(ref _closed) is not null;

    /// <summary>Waits until the store answers (returns at once while it does).</summary>
    public Task WaitAsync(CancellationToken cancellationToken) =>
        Volatile.Read(ref _closed) is { } closed ? closed.Task.WaitAsync(cancellationToken) : Task.CompletedTask;

    /// <summary>Closes the gate if it is open and returns the number of outages in a row, for the backoff.</summary>
    public int Close()
    {
        lock (_lock)
        {
            if (_closed is null)
            {
                _outages++;
                _closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                _statistics.AddStoreOutage();
                Log.StorePaused(_logger, _queue, _outages);
                if (_health is not null)
                {
                    _health.State = ConsumerState.Paused;
                    _health.Detail = "idempotency store unreachable";
                }

                _ = PingUntilAnswersAsync(_closed);
            }

            return _outages;
        }
    }

    /// <summary>Records that the store worked, so the next outage starts the backoff from the beginning.</summary>
    public void MarkHealthy()
    {
        if (Volatile.Read(ref _outages) == 0)
        {
            return;
        }

        lock (_lock)
        {
            if (_closed is null)
            {
                _outages = 0;
            }
        }
    }

    private async Task PingUntilAnswersAsync(TaskCompletionSource closed)
    {
        var attempt = 1;
        try
        {
            while (true)
            {
                await Task.Delay(_backoff.GetDelay(attempt++), _time, _stopping).ConfigureAwait(false);
                _health?.Beat();
                bool answered;
                try
                {
                    answered = await _store.PingAsync(_stopping).ConfigureAwait(false);
                }
                catch (Exception) when (!_stopping.IsCancellationRequested)
                {
                    answered = false;
                }

                if (answered)
                {
                    if (_health is not null)
                    {
                        _health.State = ConsumerState.Running;
                        _health.Detail = null;
                    }

                    Log.StoreResumed(_logger, _queue);
                    break;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping: the pollers leave on their own.
        }

        lock (_lock)
        {
            _closed = null;
        }

        closed.TrySetResult();
    }
}
