using Idempotency.Diagnostics;
using Idempotency.Storage;

namespace Idempotency.Processing;

/// <summary>
/// <see cref="ClaimTiming.AtCommit"/>: the handler runs first and the key is inserted, completed, with the commit; a
/// key committed by someone else first turns the commit into a rollback. The key is looked up first only when a
/// duplicate is likely.
/// </summary>
internal sealed class ClaimAtCommit(ProcessingSteps steps, IIdempotentMessageHandler handler, IDeferredClaimStore store) : ClaimStrategy(steps)
{
    /// <inheritdoc/>
    protected override async ValueTask<ProcessingResult> RunAsync(IncomingMessage message, ClaimRequest claim, bool storePosition, Attempt attempt, CancellationToken cancellationToken)
    {
        var results = Steps.Results;

        var lookedUp = !message.KeyLookedUp && (message.Redelivered || message.DeliveryAttempt > 1 || Steps.DuplicateRate.IsHigh);
        if (lookedUp && await Steps.LookUpAsync(store, claim, cancellationToken).ConfigureAwait(false) is { } found)
        {
            return results.NotClaimed(message, claim, found);
        }

        var transaction = attempt.Transaction = await Steps.BeginAsync(cancellationToken).ConfigureAwait(false);
        var deferred = transaction as IDeferredClaimTransaction
            ?? throw new InvalidOperationException($"The '{Steps.Store.Name}' store said it claims at commit but its transaction does not implement {nameof(IDeferredClaimTransaction)}.");
        var context = new MessageContext(message, claim.Key, Steps.HandlerName, transaction);
        var handlerStarted = Steps.Time.GetTimestamp();
        try
        {
            await handler.HandleAsync(context, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
        {
            var failed = await Steps.HandlerThrewAsync(message, claim, transaction, exception).ConfigureAwait(false);
            if (failed.Outcome != ProcessingOutcome.Failed)
            {
                return failed;
            }

            // The handler ran without a claim: it may have failed only because the message is a duplicate (a
            // business insert meeting its own earlier row, say). A committed key makes it a duplicate, not a failure.
            ClaimResult? processed;
            try
            {
                processed = await store.FindProcessedAsync(claim, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception lookUpFailure) when (!ProcessingSteps.IsCancellation(lookUpFailure, cancellationToken))
            {
                // Whether it was a duplicate cannot be learned now: the store's failure, not the handler's.
                return results.StoreWorkFailed(message, claim, lookUpFailure, handlerRan: false);
            }

            if (processed is { } known)
            {
                Steps.DuplicateRate.Record(true);
                return results.NotClaimed(message, claim, known);
            }

            return failed;
        }

        attempt.HandlerRan = true;
        var duration = Steps.Time.GetElapsedTime(handlerStarted);
        IdempotencyMetrics.RecordHandlerDuration(message, Steps.HandlerName, duration);
        var commitStarted = Steps.Time.GetTimestamp();

        // Once the commit is sent its outcome must be learned, so shutdown does not cancel it half way.
        var committed = await deferred.ClaimAndCommitAsync(new CompletionRecord(claim, duration, context.Result) { Position = storePosition ? message.Position : null }, context.Outbox, CancellationToken.None).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(Steps.Store.Name, "commit", Steps.Time.GetElapsedTime(commitStarted));
        if (!(lookedUp || message.KeyLookedUp) || committed.Status != ClaimStatus.Claimed)
        {
            // A looked-up message was counted by its look-up; count it again only if a duplicate raced past it.
            Steps.DuplicateRate.Record(committed.Status != ClaimStatus.Claimed);
        }

        return committed.Status == ClaimStatus.Claimed
            ? new ProcessingResult(message, ProcessingOutcome.Processed) { PayloadFingerprint = claim.Fingerprint }
            : results.NotClaimed(message, claim, committed);
    }
}
