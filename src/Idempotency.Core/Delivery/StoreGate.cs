using Idempotency.Health;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Delivery;

/// <summary>
/// One consumer's gate on its store: the first store failure (an outage or a misconfiguration) closes it and starts
/// one probe loop; every lane of the consumer waits on it instead of taking messages, and it opens when
/// <see cref="IIdempotencyStore.CheckAsync"/> says the store answers and is set up. Nothing is acknowledged,
/// dead-lettered or counted as an attempt meanwhile.
/// </summary>
/// <remarks>
/// An outage is probed with the store-unavailable backoff; a misconfiguration slowly (at the backoff's longest delay),
/// with a critical log naming the fix and the consumer's health <see cref="ConsumerState.Misconfigured"/> (unhealthy),
/// so that a fixed configuration resumes by itself. Thread-safe.
/// </remarks>
public sealed class StoreGate
{
    private readonly IIdempotencyStore _store;
    private readonly string _consumer;
    private readonly BackoffOptions _backoff;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly ConsumerHeartbeat? _heartbeat;
    private readonly CancellationToken _stopping;
    private readonly Lock _lock = new();
    private TaskCompletionSource? _closed;
    private StoreFailure? _failure;
    private int _closures;

    // Closures in a row with no message committed in between: a store whose check passes while its work still fails
    // (a server that answers reads but takes no writes) would otherwise reopen at the backoff's first delay every time,
    // and each round gives every message back to the broker once more (one more receive toward a redrive limit).
    private int _closuresWithoutWork;
    private bool _workedSinceReopen = true;

    /// <summary>The most closures in a row the backoff grows for; further ones wait the backoff's longest delay anyway.</summary>
    private const int MaxClosuresWithoutWork = 16;

    /// <summary>Creates the gate of one consumer.</summary>
    /// <param name="store">The consumer's store.</param>
    /// <param name="consumer">The consumer's name, for logs and health (such as <c>rabbitmq:orders</c>).</param>
    /// <param name="backoff">The delays between probes of an outage; a misconfiguration is probed at its <see cref="BackoffOptions.MaxDelay"/>.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <param name="heartbeat">The consumer's heartbeat, whose state the gate sets while closed and beats while probing.</param>
    /// <param name="stopping">Ends the probe loop (the consumer is stopping).</param>
    public StoreGate(IIdempotencyStore store, string consumer, BackoffOptions backoff, ILogger? logger = null, TimeProvider? timeProvider = null, ConsumerHeartbeat? heartbeat = null, CancellationToken stopping = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentException.ThrowIfNullOrEmpty(consumer);
        ArgumentNullException.ThrowIfNull(backoff);
        _store = store;
        _consumer = consumer;
        _backoff = backoff;
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _heartbeat = heartbeat;
        _stopping = stopping;
    }

    /// <summary>Gets a value indicating whether the gate is closed (the store is down or misconfigured).</summary>
    public bool IsClosed => Volatile.Read(ref _closed) is not null;

    /// <summary>Gets the failure that keeps the gate closed, or <see langword="null"/> while it is open.</summary>
    public StoreFailure? Failure
    {
        get
        {
            lock (_lock)
            {
                return _closed is null ? null : _failure;
            }
        }
    }

    /// <summary>Gets how many times the gate has closed since it was created.</summary>
    public int Closures => Volatile.Read(ref _closures);

    /// <summary>
    /// Gets how long a message the store failed goes back to its broker for (where it is given back rather than retried in
    /// place): the backoff's first delay, growing while the gate closes again and again with nothing committed in between.
    /// </summary>
    internal TimeSpan GiveBackDelay => _backoff.GetDelay(1 + Volatile.Read(ref _closuresWithoutWork));

    /// <summary>Records that a message committed (or was found committed): the next closure's backoff starts afresh.</summary>
    internal void RecordWork()
    {
        if (!Volatile.Read(ref _workedSinceReopen))
        {
            Volatile.Write(ref _workedSinceReopen, true);
        }
    }

    /// <summary>Waits until the gate is open (returns at once while it is).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>A task that completes when the store answers and is set up.</returns>
    public Task WaitAsync(CancellationToken cancellationToken = default) =>
        Volatile.Read(ref _closed) is { } closed ? closed.Task.WaitAsync(cancellationToken) : Task.CompletedTask;

    /// <summary>Closes the gate for a result whose store work failed; does nothing for other outcomes.</summary>
    /// <param name="result">The result (<see cref="ProcessingOutcome.StoreUnavailable"/> or <see cref="ProcessingOutcome.StoreMisconfigured"/>).</param>
    /// <returns><see langword="true"/> when this call closed an open gate.</returns>
    public bool Close(ProcessingResult result)
    {
        ArgumentNullException.ThrowIfNull(result);
        return result.Outcome switch
        {
            ProcessingOutcome.StoreMisconfigured => Close(result.StoreFailure ?? new StoreFailure(StoreFailureKind.Misconfiguration, result.Exception?.Message ?? "misconfigured")),
            ProcessingOutcome.StoreUnavailable => Close(result.StoreFailure ?? new StoreFailure(StoreFailureKind.Outage, result.Exception?.Message ?? "unreachable")),
            _ => false,
        };
    }

    /// <summary>Closes the gate for a store failure and starts probing the store, unless it is closed already.</summary>
    /// <param name="failure">What failed.</param>
    /// <returns><see langword="true"/> when this call closed an open gate.</returns>
    public bool Close(StoreFailure failure)
    {
        lock (_lock)
        {
            if (_closed is not null)
            {
                if (failure.Kind == StoreFailureKind.Misconfiguration && _failure?.Kind != StoreFailureKind.Misconfiguration)
                {
                    Report(failure);
                }

                return false;
            }

            _closures++;
            _closuresWithoutWork = Volatile.Read(ref _workedSinceReopen) ? 0 : Math.Min(_closuresWithoutWork + 1, MaxClosuresWithoutWork);
            Volatile.Write(ref _workedSinceReopen, false);
            _closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Report(failure);
            _ = ProbeUntilReadyAsync(_closed);
            return true;
        }
    }

    /// <summary>Checks the store once (as at host start) and closes the gate when it is not ready.</summary>
    /// <param name="cancellationToken">Cancels the check.</param>
    /// <returns>The failure found, or <see langword="null"/> when the store is ready.</returns>
    public async ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default)
    {
        var failure = await CheckStoreAsync(cancellationToken).ConfigureAwait(false);
        if (failure is { } found)
        {
            Close(found);
        }

        return failure;
    }

    private void Report(StoreFailure failure)
    {
        _failure = failure;
        if (failure.Kind == StoreFailureKind.Misconfiguration)
        {
            StoreGateLog.Misconfigured(_logger, _consumer, _store.Name, failure.Description);
            SetHealth(ConsumerState.Misconfigured, $"the {_store.Name} store is misconfigured: {failure.Description}");
        }
        else
        {
            StoreGateLog.Paused(_logger, _consumer, _store.Name, failure.Description);
            SetHealth(ConsumerState.Paused, $"the {_store.Name} store is unreachable: {failure.Description}");
        }
    }

    private void SetHealth(ConsumerState state, string? detail)
    {
        if (_heartbeat is not null)
        {
            _heartbeat.State = state;
            _heartbeat.Detail = detail;
        }
    }

    private async Task ProbeUntilReadyAsync(TaskCompletionSource closed)
    {
        var attempt = 1 + Volatile.Read(ref _closuresWithoutWork);
        try
        {
            while (true)
            {
                var misconfigured = Failure?.Kind == StoreFailureKind.Misconfiguration;
                var delay = misconfigured ? _backoff.MaxDelay : _backoff.GetDelay(attempt++);
                await Task.Delay(delay, _time, _stopping).ConfigureAwait(false);
                _heartbeat?.Beat();
                var failure = await CheckStoreAsync(_stopping).ConfigureAwait(false);
                if (failure is null)
                {
                    break;
                }

                lock (_lock)
                {
                    if (failure.Value.Kind != _failure?.Kind)
                    {
                        Report(failure.Value);
                    }
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Stopping: the lanes leave on their own.
            return;
        }

        lock (_lock)
        {
            _closed = null;
            _failure = null;
        }

        SetHealth(ConsumerState.Running, null);
        StoreGateLog.Resumed(_logger, _consumer, _store.Name);
        closed.TrySetResult();
    }

    private async ValueTask<StoreFailure?> CheckStoreAsync(CancellationToken cancellationToken)
    {
        try
        {
            return await _store.CheckAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            return _store.ClassifyFailure(exception);
        }
    }
}
