using System.Net.Http;
using System.Net.Sockets;
using Idempotency.Delivery;
using Idempotency.Storage;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

/// <summary>
/// The engine's failure table: for every origin of a failure (the handler, the store's own work, a lost lease), the
/// outcome, what the adapter does, and whether an attempt is spent. Only the handler spends attempts.
/// </summary>
public sealed class FailureOriginTests
{
    public enum Origin
    {
        HandlerThrows,
        HandlerDownstreamTimeout,
        HandlerDownstreamRefused,
        HandlerThrowsStoreLookingException,
        HandlerThrowsOnBrokenTransaction,
        HandlerThrowsWhileStoreDown,
        BeginOutage,
        BeginMisconfigured,
        ClaimMisconfigured,
        ClaimRejectedData,
        CommitOutage,
        CommitMisconfigured,
        CommitRejectsHandlerWrites,
        CommitLeaseLost,
    }

    public static TheoryData<Origin, ClaimTiming, ProcessingOutcome, DeliveryAction, bool> Table()
    {
        var data = new TheoryData<Origin, ClaimTiming, ProcessingOutcome, DeliveryAction, bool>();
        foreach (var timing in new[] { ClaimTiming.BeforeHandler, ClaimTiming.AtCommit })
        {
            data.Add(Origin.HandlerThrows, timing, ProcessingOutcome.Failed, DeliveryAction.Retry, true);
            data.Add(Origin.HandlerDownstreamTimeout, timing, ProcessingOutcome.Failed, DeliveryAction.Retry, true);
            data.Add(Origin.HandlerDownstreamRefused, timing, ProcessingOutcome.Failed, DeliveryAction.Retry, true);
            data.Add(Origin.HandlerThrowsStoreLookingException, timing, ProcessingOutcome.Failed, DeliveryAction.Retry, true);
            data.Add(Origin.HandlerThrowsOnBrokenTransaction, timing, ProcessingOutcome.StoreUnavailable, DeliveryAction.PauseAndRetry, false);
            data.Add(Origin.HandlerThrowsWhileStoreDown, timing, ProcessingOutcome.StoreUnavailable, DeliveryAction.PauseAndRetry, false);
            data.Add(Origin.BeginOutage, timing, ProcessingOutcome.StoreUnavailable, DeliveryAction.PauseAndRetry, false);
            data.Add(Origin.BeginMisconfigured, timing, ProcessingOutcome.StoreMisconfigured, DeliveryAction.PauseAndRetry, false);
            data.Add(Origin.CommitOutage, timing, ProcessingOutcome.StoreUnavailable, DeliveryAction.PauseAndRetry, false);
            data.Add(Origin.CommitMisconfigured, timing, ProcessingOutcome.StoreMisconfigured, DeliveryAction.PauseAndRetry, false);
            data.Add(Origin.CommitRejectsHandlerWrites, timing, ProcessingOutcome.Failed, DeliveryAction.Retry, true);
            data.Add(Origin.CommitLeaseLost, timing, ProcessingOutcome.LeaseLost, DeliveryAction.RetryLater, false);
        }

        // Claims happen before the handler only with BeforeHandler (AtCommit claims in the commit).
        data.Add(Origin.ClaimMisconfigured, ClaimTiming.BeforeHandler, ProcessingOutcome.StoreMisconfigured, DeliveryAction.PauseAndRetry, false);
        data.Add(Origin.ClaimRejectedData, ClaimTiming.BeforeHandler, ProcessingOutcome.StoreUnavailable, DeliveryAction.PauseAndRetry, false);
        return data;
    }

    [Theory]
    [MemberData(nameof(Table))]
    public async Task Failure_origin_decides_outcome_action_and_attempt(Origin origin, ClaimTiming timing, ProcessingOutcome outcome, DeliveryAction action, bool attemptSpent)
    {
        var store = new ScriptedStore();
        var ran = 0;
        Exception? handlerError = origin switch
        {
            Origin.HandlerThrows or Origin.HandlerThrowsOnBrokenTransaction or Origin.HandlerThrowsWhileStoreDown => new InvalidOperationException("handler bug"),
            Origin.HandlerDownstreamTimeout => new TaskCanceledException("HTTP call timed out", new TimeoutException("downstream")),
            Origin.HandlerDownstreamRefused => new HttpRequestException("refused", new SocketException((int)SocketError.ConnectionRefused)),
            Origin.HandlerThrowsStoreLookingException => new IdempotencyStoreUnavailableException("a handler's own exception of a store-looking type"),
            _ => null,
        };
        (store.FailAt, store.Failure) = origin switch
        {
            Origin.BeginOutage => (StorePhase.Begin, new ScriptedStoreException(StoreFailureKind.Outage)),
            Origin.BeginMisconfigured => (StorePhase.Begin, new ScriptedStoreException(StoreFailureKind.Misconfiguration)),
            Origin.ClaimMisconfigured => (StorePhase.Claim, new ScriptedStoreException(StoreFailureKind.Misconfiguration)),
            Origin.ClaimRejectedData => (StorePhase.Claim, new ScriptedStoreException(StoreFailureKind.WriteRejected)),
            Origin.CommitOutage => (StorePhase.Commit, new ScriptedStoreException(StoreFailureKind.Outage)),
            Origin.CommitMisconfigured => (StorePhase.Commit, new ScriptedStoreException(StoreFailureKind.Misconfiguration)),
            Origin.CommitRejectsHandlerWrites => (StorePhase.Commit, new ScriptedStoreException(StoreFailureKind.WriteRejected)),
            Origin.CommitLeaseLost => (StorePhase.Commit, new ClaimLostException("k")),
            _ => (StorePhase.None, (Exception?)null),
        };
        store.TransactionBroken = origin == Origin.HandlerThrowsOnBrokenTransaction;
        store.PingFails = origin == Origin.HandlerThrowsWhileStoreDown;

        var options = Options();
        options.ClaimTiming = timing;
        options.Retry.MaxAttempts = 3;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) =>
        {
            ran++;
            return handlerError is null ? ValueTask.CompletedTask : ValueTask.FromException(handlerError);
        }), options);

        var result = await processor.ProcessAsync(Create("k"), TestContext.Current.CancellationToken);
        var decision = processor.Decide(result, attempt: 1);

        Assert.Equal(outcome, result.Outcome);
        Assert.Equal(action, decision.Action);
        Assert.Equal(attemptSpent, decision.Action is DeliveryAction.Retry or DeliveryAction.DeadLetter);
        Assert.Null(store.Inner.Find("h", "k"));
        if (origin is Origin.BeginOutage or Origin.BeginMisconfigured or Origin.ClaimMisconfigured or Origin.ClaimRejectedData)
        {
            Assert.Equal(0, ran);
        }

        // At the last attempt only the handler's failures are dead-lettered; the store's never are.
        var last = processor.Decide(result, attempt: 3);
        Assert.Equal(attemptSpent ? DeliveryAction.DeadLetter : action, last.Action);
    }

    [Theory]
    [InlineData(StoreFailureKind.Outage, ProcessingOutcome.StoreUnavailable)]
    [InlineData(StoreFailureKind.Misconfiguration, ProcessingOutcome.StoreMisconfigured)]
    public async Task A_batch_whose_claim_fails_blames_no_message(StoreFailureKind kind, ProcessingOutcome expected)
    {
        var store = new ScriptedStore { FailAt = StorePhase.Claim, Failure = new ScriptedStoreException(kind) };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options());

        var results = await processor.ProcessBatchAsync([Create("a"), Create("b"), Create("c")], TestContext.Current.CancellationToken);

        Assert.All(results, r => Assert.Equal(expected, r.Outcome));
        Assert.All(results, r => Assert.Equal(DeliveryAction.PauseAndRetry, processor.Decide(r, 5).Action));
        Assert.Equal(0, store.Inner.Count);
    }

    [Fact]
    public async Task A_batch_handler_that_times_out_downstream_fails_alone_while_the_store_answers()
    {
        var store = new ScriptedStore();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, _) =>
            context.Key == "b" ? ValueTask.FromException(new TaskCanceledException("timeout", new TimeoutException())) : ValueTask.CompletedTask), Options());

        var results = await processor.ProcessBatchAsync([Create("a"), Create("b"), Create("c")], TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Failed, ProcessingOutcome.Processed], results.Select(r => r.Outcome));
        Assert.Equal(2, store.Inner.Count);
    }

    [Fact]
    public async Task A_batch_handler_on_a_broken_connection_is_an_outage_for_the_whole_batch()
    {
        var store = new ScriptedStore();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, _) =>
        {
            if (context.Key == "b")
            {
                store.TransactionBroken = true;
                throw new InvalidOperationException("connection reset");
            }

            return ValueTask.CompletedTask;
        }), Options());

        var results = await processor.ProcessBatchAsync([Create("a"), Create("b"), Create("c")], TestContext.Current.CancellationToken);

        Assert.All(results, r => Assert.Equal(ProcessingOutcome.StoreUnavailable, r.Outcome));
        Assert.Equal(0, store.Inner.Count);
    }

    [Fact]
    public async Task Cancellation_is_not_an_outcome()
    {
        var store = new ScriptedStore();
        using var cancel = new CancellationTokenSource();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (_, ct) =>
        {
            await cancel.CancelAsync();
            ct.ThrowIfCancellationRequested();
        }), Options());

        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await processor.ProcessAsync(Create("k"), cancel.Token));
        Assert.Equal(0, store.Inner.Count);
    }
}
