using Idempotency.Diagnostics;
using Idempotency.Health;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Delivery;

/// <summary>
/// The broker-neutral half of a consumer: it decides what becomes of each processed message and carries it out through
/// the adapter's <see cref="IDeliveryPort{TDelivery}"/>. It owns the rules every adapter shares: only the handler spends
/// attempts (counted per message in an <see cref="AttemptLedger"/> unless the broker retries in place), a store outage
/// or misconfiguration closes the consumer's <see cref="StoreGate"/> and pauses intake, a held key or lost lease is tried
/// later, and nothing is settled that did not commit or was not deliberately dead-lettered.
/// </summary>
/// <remarks>One engine per consumer; thread-safe: lanes settle concurrently.</remarks>
public sealed class DeliveryEngine
{
    private readonly IdempotentProcessor _processor;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly CancellationToken _stopping;
    private readonly IDeliveryObserver[] _observers;

    /// <summary>Creates the engine of one consumer.</summary>
    /// <param name="processor">The consumer's pipeline.</param>
    /// <param name="consumer">The consumer's name, for logs and health (such as <c>rabbitmq:orders</c>).</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <param name="heartbeat">The consumer's heartbeat, whose state the store gate sets.</param>
    /// <param name="maxTrackedMessages">How many failing messages the attempt ledger remembers.</param>
    /// <param name="stopping">Ends waits (the consumer is stopping).</param>
    /// <param name="observers">Told about every message the engine settled or gave back.</param>
    public DeliveryEngine(IdempotentProcessor processor, string consumer, ILogger? logger = null, TimeProvider? timeProvider = null, ConsumerHeartbeat? heartbeat = null, int maxTrackedMessages = 10_000, CancellationToken stopping = default, IEnumerable<IDeliveryObserver>? observers = null)
    {
        ArgumentNullException.ThrowIfNull(processor);
        _processor = processor;
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _stopping = stopping;
        Gate = new StoreGate(processor.Store, consumer, processor.StoreUnavailableBackoff, _logger, _time, heartbeat, stopping);
        Attempts = new AttemptLedger(maxTrackedMessages);
        _observers = observers?.Distinct().ToArray() ?? [];
    }

    /// <summary>Gets the consumer's store gate: lanes wait on it before taking messages.</summary>
    public StoreGate Gate { get; }

    /// <summary>Gets the handler attempts remembered per message.</summary>
    public AttemptLedger Attempts { get; }

    /// <summary>Gets the pipeline.</summary>
    public IdempotentProcessor Processor => _processor;

    /// <summary>Returns the 1-based handler attempt the next processing of a message is.</summary>
    /// <typeparam name="TDelivery">The adapter's delivery type.</typeparam>
    /// <param name="port">The adapter's port.</param>
    /// <param name="delivery">The delivery.</param>
    /// <returns>The attempt.</returns>
    public int NextAttempt<TDelivery>(IDeliveryPort<TDelivery> port, TDelivery delivery)
    {
        ArgumentNullException.ThrowIfNull(port);

        // Nothing remembered (nothing failed lately): the first attempt, without building the message's id.
        return Attempts.IsEmpty ? 1 : Attempts.NextAttempt(port.AttemptId(delivery));
    }

    /// <summary>
    /// Processes the ready messages of one lane: one message alone, several in one store transaction (natural batching),
    /// in order.
    /// </summary>
    /// <param name="ready">The lane's ready messages, in delivery order.</param>
    /// <param name="cancellationToken">Cancels processing; nothing uncommitted may be settled.</param>
    /// <returns>One result per message, in order.</returns>
    public async ValueTask<IReadOnlyList<ProcessingResult>> ProcessAsync(IReadOnlyList<IncomingMessage> ready, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(ready);
        return ready.Count == 1
            ? [await _processor.ProcessAsync(ready[0], cancellationToken).ConfigureAwait(false)]
            : await _processor.ProcessBatchAsync(ready, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Decides what becomes of a processed message and carries it out through the port.</summary>
    /// <typeparam name="TDelivery">The adapter's delivery type.</typeparam>
    /// <param name="port">The adapter's port.</param>
    /// <param name="delivery">The delivery.</param>
    /// <param name="result">Its processing result.</param>
    /// <param name="attempt">The handler attempt that produced the result; <see langword="null"/> to take it from the ledger.</param>
    /// <param name="cancellationToken">Cuts waits short (stopping).</param>
    /// <returns>Whether it settled, went back to the broker, or must be processed again in place, and whether an attempt was spent.</returns>
    public async ValueTask<Settlement> SettleAsync<TDelivery>(IDeliveryPort<TDelivery> port, TDelivery delivery, ProcessingResult result, int? attempt = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(port);
        ArgumentNullException.ThrowIfNull(result);
        if (result.IsCommitted)
        {
            Gate.RecordWork();
        }

        var attempts = attempt ?? NextAttempt(port, delivery);
        var decision = _processor.Decide(result, attempts);
        var outcome = await CarryOutAsync(port, delivery, result, decision, attempts, cancellationToken).ConfigureAwait(false);
        if (_observers.Length > 0)
        {
            Notify(port, result, decision, outcome == SettleOutcome.Settled, attempts);
        }

        return new Settlement(outcome, decision.Action == DeliveryAction.Retry, decision);
    }

    private void Notify<TDelivery>(IDeliveryPort<TDelivery> port, ProcessingResult result, DeliveryDecision decision, bool settled, int attempt)
    {
        var key = result.Outcome == ProcessingOutcome.InvalidKey ? null : result.Message.Key;
        var observation = new DeliveryObservation(port.Broker, port.Destination, _processor.HandlerName, key, result.Outcome, decision.Action, settled, attempt, decision.ReasonCode, result.Exception);
        foreach (var observer in _observers)
        {
            try
            {
                observer.OnDelivered(observation);
            }
            catch (Exception ex)
            {
                // An observer is the user's diagnostics: its failure must never change what happens to the message.
                EngineLog.ObserverFailed(_logger, ex, observer.GetType().Name, _processor.HandlerName);
            }
        }
    }

    private async ValueTask<SettleOutcome> CarryOutAsync<TDelivery>(IDeliveryPort<TDelivery> port, TDelivery delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
    {
        switch (decision.Action)
        {
            case DeliveryAction.Acknowledge:
                await port.AcknowledgeAsync(delivery, result, cancellationToken).ConfigureAwait(false);
                Forget(port, delivery);
                return SettleOutcome.Settled;

            case DeliveryAction.DeadLetter:
                if (await port.DeadLetterAsync(delivery, result, decision, attempts, cancellationToken).ConfigureAwait(false))
                {
                    IdempotencyMetrics.RecordDeadLettered(port.Broker, _processor.HandlerName, port.Destination, decision.ReasonCode ?? "unknown");
                    Forget(port, delivery);
                    return SettleOutcome.Settled;
                }

                // The dead-letter destination did not take it: not settled, and not another attempt either. Each time it
                // comes back the whole pipeline (the failing handler included) runs again before the next try, so the
                // wait grows with every failed dead-letter instead of spinning on a destination that stays broken (the port
                // logs why it failed).
                var deadLetterFailures = Attempts.RecordDeadLetterFailure(port.AttemptId(delivery));
                var wait = _processor.StoreUnavailableBackoff.GetDelay(deadLetterFailures);
                return await TryLaterAsync(port, delivery, wait, attemptSpent: false, cancellationToken).ConfigureAwait(false);

            case DeliveryAction.Retry:
                Attempts.RecordFailure(port.AttemptId(delivery));
                EngineLog.Retrying(_logger, _processor.HandlerName, port.Destination, result.Message.Key ?? "(none)", attempts, decision.Delay);
                return await TryLaterAsync(port, delivery, decision.Delay, attemptSpent: true, cancellationToken).ConfigureAwait(false);

            case DeliveryAction.PauseAndRetry:
                // The store's failure, not the message's: no attempt; every lane waits on the gate.
                Attempts.RecordRequeue(port.AttemptId(delivery));
                Gate.Close(result);
                port.PauseIntake();
                if (port.RetriesInPlace)
                {
                    await Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
                    port.ResumeIntake();
                    return SettleOutcome.ProcessAgain;
                }

                // Back for the decision's delay (a misconfiguration: the backoff's longest) or the gate's, whichever is longer.
                var giveBack = decision.Delay > Gate.GiveBackDelay ? decision.Delay : Gate.GiveBackDelay;
                await port.ReturnAsync(delivery, giveBack, attemptSpent: false, cancellationToken).ConfigureAwait(false);
                return SettleOutcome.Returned;

            default:
                // RetryLater: another worker holds the key, or took it over; not an attempt.
                Attempts.RecordRequeue(port.AttemptId(delivery));
                return await TryLaterAsync(port, delivery, decision.Delay, attemptSpent: false, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Forgets a settled message's attempts; with nothing remembered there is nothing to forget.</summary>
    private void Forget<TDelivery>(IDeliveryPort<TDelivery> port, TDelivery delivery)
    {
        if (!Attempts.IsEmpty)
        {
            Attempts.Forget(port.AttemptId(delivery));
        }
    }

    /// <summary>Waits until the store gate is open, pausing and resuming the port's intake around the wait.</summary>
    /// <typeparam name="TDelivery">The adapter's delivery type.</typeparam>
    /// <param name="port">The adapter's port.</param>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>A task that completes when the store answers and is set up.</returns>
    public async Task WaitForStoreAsync<TDelivery>(IDeliveryPort<TDelivery> port, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(port);
        if (!Gate.IsClosed)
        {
            return;
        }

        port.PauseIntake();
        await Gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        port.ResumeIntake();
    }

    private async ValueTask<SettleOutcome> TryLaterAsync<TDelivery>(IDeliveryPort<TDelivery> port, TDelivery delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
    {
        if (port.RetriesInPlace)
        {
            await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
            return SettleOutcome.ProcessAgain;
        }

        await port.ReturnAsync(delivery, delay, attemptSpent, cancellationToken).ConfigureAwait(false);
        return SettleOutcome.Returned;
    }
}
