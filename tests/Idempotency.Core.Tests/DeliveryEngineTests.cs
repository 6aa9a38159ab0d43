using Idempotency.Delivery;
using Idempotency.Storage;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

/// <summary>
/// The engine with a fake port and no broker: every failure origin, on a broker that returns messages (RabbitMQ, SQS)
/// and on one that retries in place (Kafka), gives the expected port action and attempt count.
/// </summary>
public sealed class DeliveryEngineTests
{
    public enum PortAction
    {
        Acknowledge,
        DeadLetter,
        ReturnSpendingAttempt,
        ReturnWithoutAttempt,
        ProcessAgainSpendingAttempt,
        ProcessAgainWithoutAttempt,
    }

    public static TheoryData<FailureOriginTests.Origin, bool, PortAction> Table()
    {
        var data = new TheoryData<FailureOriginTests.Origin, bool, PortAction>();
        foreach (var inPlace in new[] { false, true })
        {
            var spend = inPlace ? PortAction.ProcessAgainSpendingAttempt : PortAction.ReturnSpendingAttempt;
            var free = inPlace ? PortAction.ProcessAgainWithoutAttempt : PortAction.ReturnWithoutAttempt;
            data.Add(FailureOriginTests.Origin.HandlerThrows, inPlace, spend);
            data.Add(FailureOriginTests.Origin.HandlerDownstreamTimeout, inPlace, spend);
            data.Add(FailureOriginTests.Origin.HandlerThrowsOnBrokenTransaction, inPlace, free);
            data.Add(FailureOriginTests.Origin.BeginOutage, inPlace, free);
            data.Add(FailureOriginTests.Origin.BeginMisconfigured, inPlace, free);
            data.Add(FailureOriginTests.Origin.CommitOutage, inPlace, free);
            data.Add(FailureOriginTests.Origin.CommitRejectsHandlerWrites, inPlace, spend);
            data.Add(FailureOriginTests.Origin.CommitLeaseLost, inPlace, free);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Table))]
    public async Task Failure_origin_gives_the_port_action_and_attempt_count(FailureOriginTests.Origin origin, bool retriesInPlace, PortAction expected)
    {
        var store = new ScriptedStore();
        (store.FailAt, store.Failure) = origin switch
        {
            FailureOriginTests.Origin.BeginOutage => (StorePhase.Begin, new ScriptedStoreException(StoreFailureKind.Outage)),
            FailureOriginTests.Origin.BeginMisconfigured => (StorePhase.Begin, new ScriptedStoreException(StoreFailureKind.Misconfiguration)),
            FailureOriginTests.Origin.CommitOutage => (StorePhase.Commit, new ScriptedStoreException(StoreFailureKind.Outage)),
            FailureOriginTests.Origin.CommitRejectsHandlerWrites => (StorePhase.Commit, new ScriptedStoreException(StoreFailureKind.WriteRejected)),
            FailureOriginTests.Origin.CommitLeaseLost => (StorePhase.Commit, new ClaimLostException("k")),
            _ => (StorePhase.None, (Exception?)null),
        };
        store.TransactionBroken = origin == FailureOriginTests.Origin.HandlerThrowsOnBrokenTransaction;
        var handlerError = origin switch
        {
            FailureOriginTests.Origin.HandlerThrows or FailureOriginTests.Origin.HandlerThrowsOnBrokenTransaction => new InvalidOperationException("bug"),
            FailureOriginTests.Origin.HandlerDownstreamTimeout => new TaskCanceledException("timeout", new TimeoutException()),
            _ => (Exception?)null,
        };
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 3, InitialDelay = TimeSpan.Zero, MaxDelay = TimeSpan.Zero };
        options.StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(20) };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => handlerError is null ? ValueTask.CompletedTask : ValueTask.FromException(handlerError)), options);
        var engine = new DeliveryEngine(processor, "test", stopping: TestContext.Current.CancellationToken);
        var port = new FakePort(retriesInPlace);
        var message = Create("k");

        var result = await processor.ProcessAsync(message, TestContext.Current.CancellationToken);

        // A store failure closes the gate; the scripted store answers the probe, so a lane in place resumes at once.
        store.FailAt = StorePhase.None;
        var settled = await engine.SettleAsync(port, message, result, cancellationToken: TestContext.Current.CancellationToken).AsTask().WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        var actual = settled.Outcome switch
        {
            SettleOutcome.Settled => port.DeadLetters > 0 ? PortAction.DeadLetter : PortAction.Acknowledge,
            SettleOutcome.Returned => port.LastReturnSpentAttempt ? PortAction.ReturnSpendingAttempt : PortAction.ReturnWithoutAttempt,
            _ => settled.AttemptSpent ? PortAction.ProcessAgainSpendingAttempt : PortAction.ProcessAgainWithoutAttempt,
        };
        Assert.Equal(expected, actual);
        Assert.Equal(expected is PortAction.ReturnSpendingAttempt or PortAction.ProcessAgainSpendingAttempt ? 2 : 1, engine.NextAttempt(port, message));
        Assert.Equal(result.Outcome is ProcessingOutcome.StoreUnavailable or ProcessingOutcome.StoreMisconfigured, port.Pauses > 0);
    }

    [Fact]
    public async Task Only_handler_failures_count_toward_the_dead_letter_across_returns()
    {
        var store = new ScriptedStore();
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 2, InitialDelay = TimeSpan.Zero, MaxDelay = TimeSpan.Zero };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => throw new InvalidOperationException("poison")), options);
        var engine = new DeliveryEngine(processor, "test", stopping: TestContext.Current.CancellationToken);
        var port = new FakePort(retriesInPlace: false);
        var message = Create("k");
        var poison = await processor.ProcessAsync(message, TestContext.Current.CancellationToken);
        store.FailAt = StorePhase.Begin;
        store.Failure = new ScriptedStoreException(StoreFailureKind.Outage);
        var outage = await processor.ProcessAsync(message, TestContext.Current.CancellationToken);
        store.FailAt = StorePhase.None;

        // Delivery 1 fails (attempt 1); deliveries 2 and 3 meet outages (no attempt); delivery 4 fails again: attempt 2, dead-lettered.
        Assert.Equal(SettleOutcome.Returned, (await engine.SettleAsync(port, message, poison, cancellationToken: TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(SettleOutcome.Returned, (await engine.SettleAsync(port, message, outage, cancellationToken: TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(SettleOutcome.Returned, (await engine.SettleAsync(port, message, outage, cancellationToken: TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(0, port.DeadLetters);
        Assert.Equal(SettleOutcome.Settled, (await engine.SettleAsync(port, message, poison, cancellationToken: TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(1, port.DeadLetters);
        Assert.Equal(2, port.LastDeadLetterAttempts);
    }

    [Fact]
    public async Task A_failing_message_keeps_its_attempts_while_others_settle_and_is_forgotten_when_it_settles()
    {
        var store = new ScriptedStore();
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 2, InitialDelay = TimeSpan.Zero, MaxDelay = TimeSpan.Zero };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, _) => context.Key == "poison" ? throw new InvalidOperationException("poison") : ValueTask.CompletedTask), options);
        var engine = new DeliveryEngine(processor, "test", stopping: TestContext.Current.CancellationToken);
        var port = new FakePort(retriesInPlace: false);
        var poison = Create("poison");
        var ct = TestContext.Current.CancellationToken;
        Assert.True(engine.Attempts.IsEmpty);
        Assert.Equal(1, engine.NextAttempt(port, poison));

        Assert.Equal(SettleOutcome.Returned, (await engine.SettleAsync(port, poison, await processor.ProcessAsync(poison, ct), cancellationToken: ct)).Outcome);
        Assert.False(engine.Attempts.IsEmpty);
        Assert.Equal(2, engine.NextAttempt(port, poison));

        // Other messages settle while the failing one is remembered: they start at attempt 1 and leave its count alone.
        for (var i = 0; i < 3; i++)
        {
            var ok = Create($"ok-{i}");
            Assert.Equal(1, engine.NextAttempt(port, ok));
            Assert.Equal(SettleOutcome.Settled, (await engine.SettleAsync(port, ok, await processor.ProcessAsync(ok, ct), cancellationToken: ct)).Outcome);
        }

        Assert.Equal(3, port.Acknowledged);
        Assert.Equal(2, engine.NextAttempt(port, poison));

        // Its second failure is its last attempt: dead-lettered, and the ledger forgets it.
        Assert.Equal(SettleOutcome.Settled, (await engine.SettleAsync(port, poison, await processor.ProcessAsync(poison, ct), cancellationToken: ct)).Outcome);
        Assert.Equal(1, port.DeadLetters);
        Assert.Equal(2, port.LastDeadLetterAttempts);
        Assert.True(engine.Attempts.IsEmpty);
        Assert.Equal(1, engine.NextAttempt(port, poison));
    }

    [Fact]
    public async Task A_message_its_dead_letter_destination_refuses_comes_back_later_each_time_and_is_never_settled()
    {
        var store = new ScriptedStore();
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 1, InitialDelay = TimeSpan.Zero, MaxDelay = TimeSpan.Zero };
        options.StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromSeconds(1), MaxDelay = TimeSpan.FromSeconds(5), UseJitter = false };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => throw new InvalidOperationException("poison")), options);
        var engine = new DeliveryEngine(processor, "test", stopping: TestContext.Current.CancellationToken);
        var port = new FakePort(retriesInPlace: false) { DeadLetterTakes = false };
        var message = Create("k");
        var ct = TestContext.Current.CancellationToken;

        // Every delivery runs the failing handler and the dead-letter is refused: the message goes back without an
        // attempt, waiting the store backoff by how many dead-letters failed (1 s, 2 s, 4 s, then the 5 s cap).
        var delays = new List<TimeSpan>();
        for (var i = 0; i < 5; i++)
        {
            var settled = await engine.SettleAsync(port, message, await processor.ProcessAsync(message, ct), cancellationToken: ct);
            Assert.Equal(SettleOutcome.Returned, settled.Outcome);
            Assert.False(port.LastReturnSpentAttempt);
            delays.Add(port.LastReturnDelay);
        }

        Assert.Equal([TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(4), TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5)], delays);
        Assert.Equal(5, port.DeadLetters);
        Assert.Equal(0, port.Acknowledged);

        // Once the destination takes it, it settles and is forgotten: a later failure of the same id starts over.
        port.DeadLetterTakes = true;
        Assert.Equal(SettleOutcome.Settled, (await engine.SettleAsync(port, message, await processor.ProcessAsync(message, ct), cancellationToken: ct)).Outcome);
        Assert.True(engine.Attempts.IsEmpty);
        port.DeadLetterTakes = false;
        await engine.SettleAsync(port, message, await processor.ProcessAsync(message, ct), cancellationToken: ct);
        Assert.Equal(TimeSpan.FromSeconds(1), port.LastReturnDelay);
    }

    private sealed class FakePort(bool retriesInPlace) : IDeliveryPort<IncomingMessage>
    {
        public bool DeadLetterTakes { get; set; } = true;

        public TimeSpan LastReturnDelay { get; private set; }

        public int Acknowledged { get; private set; }

        public int DeadLetters { get; private set; }

        public int LastDeadLetterAttempts { get; private set; }

        public bool LastReturnSpentAttempt { get; private set; }

        public int Pauses { get; private set; }

        public bool RetriesInPlace => retriesInPlace;

        public string Broker => "fake";

        public string Destination => "lane";

        public string AttemptId(IncomingMessage delivery) => delivery.Key!;

        public ValueTask AcknowledgeAsync(IncomingMessage delivery, ProcessingResult result, CancellationToken cancellationToken)
        {
            Acknowledged++;
            return ValueTask.CompletedTask;
        }

        public ValueTask<bool> DeadLetterAsync(IncomingMessage delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
        {
            DeadLetters++;
            LastDeadLetterAttempts = attempts;
            return ValueTask.FromResult(DeadLetterTakes);
        }

        public ValueTask ReturnAsync(IncomingMessage delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
        {
            LastReturnSpentAttempt = attemptSpent;
            LastReturnDelay = delay;
            return ValueTask.CompletedTask;
        }

        public void PauseIntake() => Pauses++;

        public void ResumeIntake()
        {
        }
    }
}
