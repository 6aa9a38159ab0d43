using Idempotency.InMemory;
using Idempotency.Storage;

namespace Idempotency.Testing;

/// <summary>
/// Drives a handler through the ways a broker delivers a message more than once — a duplicate delivery, a crash after
/// the commit but before the ack, two concurrent copies, a failure then a retry, and a copy with the same key but a
/// different payload — through the real <see cref="IdempotentProcessor"/> and a store (in-memory or real), and checks
/// after each one, with a count the caller supplies, that the handler's effect happened exactly once.
/// </summary>
/// <remarks>
/// Each scenario uses its own fresh key. The count is the caller's view of the world (a row count in the table the
/// handler writes, a counter an in-memory handler bumps on commit), so an effect written outside the store's transaction
/// shows up as applied twice.
/// </remarks>
/// <example>
/// <code>
/// var runner = new RedeliveryScenarioRunner(
///     store,                                            // new InMemoryIdempotencyStore() or a real store
///     handler,                                          // the handler under test
///     key => new IncomingMessage(key, JsonSerializer.SerializeToUtf8Bytes(new Order(key, 10m))),
///     (key, ct) => CountOrderRowsAsync(key, ct));       // how many times the effect happened for this key
/// var report = await runner.RunAsync();
/// report.AssertExactlyOnce();                           // throws with one line per scenario
/// </code>
/// </example>
public sealed class RedeliveryScenarioRunner
{
    private readonly IIdempotencyStore _store;
    private readonly IIdempotentMessageHandler _handler;
    private readonly Func<string, IncomingMessage> _createMessage;
    private readonly Func<string, CancellationToken, ValueTask<int>> _countEffects;

    /// <summary>Creates a runner.</summary>
    /// <param name="store">The store to run against: an <see cref="InMemoryIdempotencyStore"/> or a real one (schema created).</param>
    /// <param name="handler">The handler under test.</param>
    /// <param name="createMessage">Creates the message for a key; the effect it causes must be countable by that key.</param>
    /// <param name="countEffects">Returns how many times the effect of the message with that key has happened.</param>
    public RedeliveryScenarioRunner(
        IIdempotencyStore store,
        IIdempotentMessageHandler handler,
        Func<string, IncomingMessage> createMessage,
        Func<string, CancellationToken, ValueTask<int>> countEffects)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(handler);
        ArgumentNullException.ThrowIfNull(createMessage);
        ArgumentNullException.ThrowIfNull(countEffects);
        _store = store;
        _handler = handler;
        _createMessage = createMessage;
        _countEffects = countEffects;
    }

    /// <summary>Gets the handler options the processors use.</summary>
    /// <value>Defaults to handler name <c>redelivery-scenarios</c> and the library's defaults otherwise.</value>
    public IdempotencyOptions Options { get; init; } = new() { HandlerName = "redelivery-scenarios" };

    /// <summary>Gets the scenarios to run.</summary>
    /// <value>Defaults to every <see cref="RedeliveryScenario"/>.</value>
    public IReadOnlyCollection<RedeliveryScenario> Scenarios { get; init; } = Enum.GetValues<RedeliveryScenario>();

    /// <summary>Gets a function that makes the same-key, different-payload copy of a message.</summary>
    /// <value>Defaults to the same key with a space appended to the body (still valid JSON, a different fingerprint).</value>
    public Func<IncomingMessage, IncomingMessage>? CreateVariant { get; init; }

    /// <summary>Gets how long each handler call of <see cref="RedeliveryScenario.ConcurrentCopies"/> is held, so the copies overlap.</summary>
    /// <value>Defaults to 100 ms.</value>
    public TimeSpan ConcurrentHandlerDelay { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Gets how many times a message is delivered at most while it is not committed (as a broker redelivers it).</summary>
    /// <value>Defaults to 10.</value>
    public int MaxDeliveries { get; init; } = 10;

    /// <summary>Gets the pause between redeliveries of an uncommitted message.</summary>
    /// <value>Defaults to 50 ms.</value>
    public TimeSpan RedeliveryDelay { get; init; } = TimeSpan.FromMilliseconds(50);

    /// <summary>Runs the scenarios one after the other.</summary>
    /// <param name="cancellationToken">Cancels the run.</param>
    /// <returns>The report; call <see cref="RedeliveryReport.AssertExactlyOnce"/> to fail a test.</returns>
    public async Task<RedeliveryReport> RunAsync(CancellationToken cancellationToken = default)
    {
        var results = new List<RedeliveryScenarioResult>();
        foreach (var scenario in Scenarios)
        {
            results.Add(await RunAsync(scenario, cancellationToken).ConfigureAwait(false));
        }

        return new RedeliveryReport(results);
    }

    private async Task<RedeliveryScenarioResult> RunAsync(RedeliveryScenario scenario, CancellationToken cancellationToken)
    {
        var key = $"{scenario}-{Guid.NewGuid():N}";
        var message = _createMessage(key) ?? throw new InvalidOperationException("createMessage returned null.");
        if (message.Key != key)
        {
            throw new InvalidOperationException($"createMessage must return a message with the key it was given ('{key}'), not '{message.Key}'.");
        }

        var outcomes = new List<ProcessingOutcome>();
        var failure = scenario switch
        {
            RedeliveryScenario.DuplicateDelivery => await DuplicateDeliveryAsync(message, outcomes, cancellationToken).ConfigureAwait(false),
            RedeliveryScenario.CrashAfterCommitBeforeAck => await CrashAfterCommitAsync(message, outcomes, cancellationToken).ConfigureAwait(false),
            RedeliveryScenario.ConcurrentCopies => await ConcurrentCopiesAsync(message, outcomes, cancellationToken).ConfigureAwait(false),
            RedeliveryScenario.FailureThenRetry => await FailureThenRetryAsync(message, outcomes, cancellationToken).ConfigureAwait(false),
            RedeliveryScenario.SameKeyDifferentPayload => await SameKeyDifferentPayloadAsync(message, outcomes, cancellationToken).ConfigureAwait(false),
            _ => throw new ArgumentOutOfRangeException(nameof(scenario), scenario, "Unknown scenario."),
        };

        var count = await _countEffects(key, cancellationToken).ConfigureAwait(false);
        if (failure is null && count != 1)
        {
            failure = $"the effect happened {count} times, not once";
        }

        return new RedeliveryScenarioResult(scenario, key, outcomes, count, failure);
    }

    private async Task<string?> DuplicateDeliveryAsync(IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        var processor = NewProcessor(_handler);
        var first = await DeliverUntilCommittedAsync(processor, message, outcomes, cancellationToken).ConfigureAwait(false);
        if (first.Outcome != ProcessingOutcome.Processed)
        {
            return NotProcessed("the first delivery", first);
        }

        var second = await DeliverAsync(processor, Redelivery(message), outcomes, cancellationToken).ConfigureAwait(false);
        return second.Outcome == ProcessingOutcome.Duplicate ? null : Unexpected("the second delivery", second, ProcessingOutcome.Duplicate);
    }

    private async Task<string?> CrashAfterCommitAsync(IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        // The consumer that committed dies before its ack reaches the broker: nothing of it survives but the store.
        var first = await DeliverUntilCommittedAsync(NewProcessor(_handler), message, outcomes, cancellationToken).ConfigureAwait(false);
        if (first.Outcome != ProcessingOutcome.Processed)
        {
            return NotProcessed("the delivery before the crash", first);
        }

        var restarted = NewProcessor(_handler);
        var redelivered = await DeliverAsync(restarted, Redelivery(message), outcomes, cancellationToken).ConfigureAwait(false);
        return redelivered.Outcome == ProcessingOutcome.Duplicate ? null : Unexpected("the redelivery after the restart", redelivered, ProcessingOutcome.Duplicate);
    }

    private async Task<string?> ConcurrentCopiesAsync(IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        var slow = new DelayingHandler(_handler, ConcurrentHandlerDelay);
        var first = NewProcessor(slow);
        var second = NewProcessor(slow);
        var start = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var firstOutcomes = new List<ProcessingOutcome>();
        var secondOutcomes = new List<ProcessingOutcome>();
        var a = Task.Run(async () => { await start.Task.ConfigureAwait(false); return await DeliverUntilCommittedAsync(first, message, firstOutcomes, cancellationToken).ConfigureAwait(false); }, cancellationToken);
        var b = Task.Run(async () => { await start.Task.ConfigureAwait(false); return await DeliverUntilCommittedAsync(second, message, secondOutcomes, cancellationToken).ConfigureAwait(false); }, cancellationToken);
        start.SetResult();
        var results = await Task.WhenAll(a, b).ConfigureAwait(false);
        outcomes.AddRange(firstOutcomes);
        outcomes.AddRange(secondOutcomes);

        var processed = results.Count(r => r.Outcome == ProcessingOutcome.Processed);
        var duplicates = results.Count(r => r.Outcome == ProcessingOutcome.Duplicate);
        return processed == 1 && duplicates == 1
            ? null
            : $"the two copies ended {results[0].Outcome} and {results[1].Outcome}, not one Processed and one Duplicate{Describe(results.FirstOrDefault(r => r.Exception is not null))}";
    }

    private async Task<string?> FailureThenRetryAsync(IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        var failing = NewProcessor(new FailAfterHandler(_handler));
        var failed = await DeliverAsync(failing, message, outcomes, cancellationToken).ConfigureAwait(false);
        if (failed.Outcome != ProcessingOutcome.Failed)
        {
            return Unexpected("the failing delivery", failed, ProcessingOutcome.Failed);
        }

        var retried = await DeliverUntilCommittedAsync(NewProcessor(_handler), Redelivery(message), outcomes, cancellationToken).ConfigureAwait(false);
        return retried.Outcome == ProcessingOutcome.Processed ? null : NotProcessed("the retry", retried);
    }

    private async Task<string?> SameKeyDifferentPayloadAsync(IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        var processor = NewProcessor(_handler);
        var first = await DeliverUntilCommittedAsync(processor, message, outcomes, cancellationToken).ConfigureAwait(false);
        if (first.Outcome != ProcessingOutcome.Processed)
        {
            return NotProcessed("the first delivery", first);
        }

        var variant = CreateVariant?.Invoke(message) ?? new IncomingMessage(message.Key, (byte[])[.. message.Body.Span, (byte)' ']);
        if (variant.Key != message.Key || variant.Body.Span.SequenceEqual(message.Body.Span))
        {
            throw new InvalidOperationException($"{nameof(CreateVariant)} must return a message with the same key and a different body.");
        }

        var second = await DeliverAsync(processor, variant, outcomes, cancellationToken).ConfigureAwait(false);
        return second.Outcome is ProcessingOutcome.Duplicate or ProcessingOutcome.PayloadMismatch
            ? null
            : $"the copy with a different payload was {second.Outcome}, not Duplicate or PayloadMismatch (the handler must not run again){Describe(second)}";
    }

    private IdempotentProcessor NewProcessor(IIdempotentMessageHandler handler) => new(_store, handler, Options);

    private static async Task<ProcessingResult> DeliverAsync(IdempotentProcessor processor, IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        var result = await processor.ProcessAsync(message, cancellationToken).ConfigureAwait(false);
        outcomes.Add(result.Outcome);
        return result;
    }

    /// <summary>Delivers until the message committed or cannot (as a broker redelivers an unacknowledged message).</summary>
    private async Task<ProcessingResult> DeliverUntilCommittedAsync(IdempotentProcessor processor, IncomingMessage message, List<ProcessingOutcome> outcomes, CancellationToken cancellationToken)
    {
        var delivery = message;
        for (var attempt = 1; ; attempt++)
        {
            var result = await DeliverAsync(processor, delivery, outcomes, cancellationToken).ConfigureAwait(false);
            if (result.IsCommitted || attempt >= MaxDeliveries
                || result.Outcome is ProcessingOutcome.PayloadMismatch or ProcessingOutcome.InvalidKey
                || result.Exception is IdempotencyException { IsTransient: false })
            {
                return result;
            }

            await Task.Delay(RedeliveryDelay, cancellationToken).ConfigureAwait(false);
            delivery = Redelivery(delivery);
        }
    }

    private static IncomingMessage Redelivery(IncomingMessage message) => new(message.Key, message.Body)
    {
        Broker = message.Broker,
        Destination = message.Destination,
        Headers = message.Headers,
        Timestamp = message.Timestamp,
        Native = message.Native,
        Redelivered = true,
        RedeliveryCause = "redelivery",
        DeliveryAttempt = message.DeliveryAttempt + 1,
    };

    private static string NotProcessed(string what, ProcessingResult result) => Unexpected(what, result, ProcessingOutcome.Processed);

    private static string Unexpected(string what, ProcessingResult result, ProcessingOutcome expected) =>
        $"{what} was {result.Outcome}, not {expected}{Describe(result)}";

    private static string Describe(ProcessingResult? result) =>
        result?.Exception is { } exception ? $" ({exception.GetType().Name}: {exception.Message})" : string.Empty;

    /// <summary>Holds every call so that two concurrent copies overlap inside their transactions.</summary>
    private sealed class DelayingHandler(IIdempotentMessageHandler inner, TimeSpan delay) : IIdempotentMessageHandler
    {
        public async ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
            await inner.HandleAsync(context, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Runs the handler, so its writes are made, and then fails as if the process hit an error before the commit.</summary>
    private sealed class FailAfterHandler(IIdempotentMessageHandler inner) : IIdempotentMessageHandler
    {
        public async ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            await inner.HandleAsync(context, cancellationToken).ConfigureAwait(false);
            throw new SimulatedFailureException();
        }
    }

    /// <summary>The failure <see cref="RedeliveryScenario.FailureThenRetry"/> injects after the handler's writes.</summary>
    private sealed class SimulatedFailureException() : Exception("Simulated failure after the handler's writes, before the commit.");
}
