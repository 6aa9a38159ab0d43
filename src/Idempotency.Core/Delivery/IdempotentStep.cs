using Idempotency.Health;
using Microsoft.Extensions.Logging;

namespace Idempotency.Delivery;

/// <summary>
/// Wraps one handler call for a consume loop the user keeps: processes a message in the store's transaction and returns
/// what the loop should do with it, with the same decisions as the adapters' consumers (only the handler spends attempts,
/// a store outage or misconfiguration pauses, a poison message is dead-lettered). The broker packages wrap it for their
/// native message types.
/// </summary>
/// <remarks>Thread-safe; one per handler and destination. Attempts are remembered in this process, per attempt id.</remarks>
public sealed class IdempotentStep
{
    private readonly RecordingPort _port;

    /// <summary>Creates the step of one handler on one destination.</summary>
    /// <param name="processor">The handler's pipeline.</param>
    /// <param name="broker">The broker's name for telemetry (<c>kafka</c>, <c>rabbitmq</c>, <c>sqs</c>).</param>
    /// <param name="destination">The consumed topic or queue, for telemetry.</param>
    /// <param name="retriesInPlace">
    /// <see langword="true"/> when a message may not be passed until it settles (a Kafka partition): <see cref="RunAsync"/>
    /// then waits out retries and store outages itself and only returns <see cref="DeliveryAction.Acknowledge"/> or
    /// <see cref="DeliveryAction.DeadLetter"/>. <see langword="false"/> (queues): it returns at once with the delay.
    /// </param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <param name="heartbeat">Optional heartbeat whose state the store gate sets.</param>
    /// <param name="observers">Told about every message decided.</param>
    public IdempotentStep(
        IdempotentProcessor processor,
        string broker,
        string destination,
        bool retriesInPlace = false,
        ILogger? logger = null,
        TimeProvider? timeProvider = null,
        ConsumerHeartbeat? heartbeat = null,
        IEnumerable<IDeliveryObserver>? observers = null)
    {
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentException.ThrowIfNullOrEmpty(broker);
        ArgumentException.ThrowIfNullOrEmpty(destination);
        Engine = new DeliveryEngine(processor, $"{broker}:{processor.HandlerName}", logger, timeProvider, heartbeat, observers: observers);
        _port = new RecordingPort(broker, destination, processor.HandlerName, retriesInPlace);
    }

    /// <summary>Gets the delivery engine that decides and keeps the books.</summary>
    public DeliveryEngine Engine { get; }

    /// <summary>Gets whether the store answers and is set up; when <see langword="false"/>, wait with <see cref="WaitForStoreAsync"/> before taking more messages.</summary>
    public bool IsStoreReady => !Engine.Gate.IsClosed;

    /// <summary>Waits until the store answers (returns at once when it does).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>A task that completes when the store answers and is set up.</returns>
    public Task WaitForStoreAsync(CancellationToken cancellationToken = default) =>
        Engine.Gate.IsClosed ? Engine.Gate.WaitAsync(cancellationToken) : Task.CompletedTask;

    /// <summary>Processes one message and returns what to do with it.</summary>
    /// <param name="message">The message, with its key.</param>
    /// <param name="attemptId">The id under which handler attempts are counted across redeliveries (the message id, or the key).</param>
    /// <param name="attempt">The broker's own reliable 1-based attempt count, or <see langword="null"/> to count in this process.</param>
    /// <param name="cancellationToken">Cancels processing; nothing is committed then, and the message must not be acknowledged.</param>
    /// <returns>The decision, with the dead-letter headers when it is a dead-letter.</returns>
    public async ValueTask<StepResult> RunAsync(IncomingMessage message, string attemptId, int? attempt = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        ArgumentException.ThrowIfNullOrEmpty(attemptId);
        var slot = new Slot(attemptId);
        while (true)
        {
            var results = await Engine.ProcessAsync([message], cancellationToken).ConfigureAwait(false);
            var result = results[0];
            var tried = attempt ?? Engine.Attempts.NextAttempt(attemptId);
            var settlement = await Engine.SettleAsync(_port, slot, result, tried, cancellationToken).ConfigureAwait(false);
            if (settlement.Outcome == SettleOutcome.ProcessAgain)
            {
                // In place (a partition): the engine waited out the retry delay or the store outage; go again.
                attempt = null;
                continue;
            }

            var decision = settlement.Decision;
            var ready = decision.Action == DeliveryAction.PauseAndRetry ? Engine.Gate.WaitAsync(cancellationToken) : Task.CompletedTask;
            return new StepResult(decision.Action, slot.Delay ?? decision.Delay, decision.ReasonCode, decision.Reason, slot.Headers, result, tried, ready);
        }
    }

    /// <summary>
    /// Decides what becomes of a message that never reaches the handler (an adapter could not read it): the result is
    /// settled as it is, such as a <see cref="MessageDeserializationException"/> that is dead-lettered at once.
    /// </summary>
    /// <param name="result">The result that stands for the message's processing.</param>
    /// <param name="attemptId">The id under which attempts are counted.</param>
    /// <param name="cancellationToken">Cancels the settlement.</param>
    /// <returns>The decision, with the dead-letter headers when it is a dead-letter.</returns>
    internal async ValueTask<StepResult> SettleUnprocessedAsync(ProcessingResult result, string attemptId, CancellationToken cancellationToken)
    {
        var slot = new Slot(attemptId);
        var tried = Engine.Attempts.NextAttempt(attemptId);
        var settlement = await Engine.SettleAsync(_port, slot, result, tried, cancellationToken).ConfigureAwait(false);
        var decision = settlement.Decision;
        return new StepResult(decision.Action, slot.Delay ?? decision.Delay, decision.ReasonCode, decision.Reason, slot.Headers, result, tried, Task.CompletedTask);
    }

    private sealed class Slot(string attemptId)
    {
        public string AttemptId { get; } = attemptId;

        public TimeSpan? Delay { get; set; }

        public IReadOnlyDictionary<string, string>? Headers { get; set; }
    }

    /// <summary>A port that carries nothing out: it records what the loop the user keeps must do.</summary>
    private sealed class RecordingPort(string broker, string destination, string handler, bool retriesInPlace) : IDeliveryPort<Slot>
    {
        public bool RetriesInPlace => retriesInPlace;

        public string Broker => broker;

        public string Destination => destination;

        public string AttemptId(Slot delivery) => delivery.AttemptId;

        public ValueTask AcknowledgeAsync(Slot delivery, ProcessingResult result, CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public ValueTask<bool> DeadLetterAsync(Slot delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
        {
            // The loop sends the copy; if that fails it does not acknowledge, and the redelivery is decided again
            // (the handler runs again: nothing was committed for it).
            delivery.Headers = DeadLetterHeaders.Create(result, decision, handler, attempts);
            return ValueTask.FromResult(true);
        }

        public ValueTask ReturnAsync(Slot delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
        {
            delivery.Delay = delay;
            return ValueTask.CompletedTask;
        }

        public void PauseIntake()
        {
        }

        public void ResumeIntake()
        {
        }
    }
}
