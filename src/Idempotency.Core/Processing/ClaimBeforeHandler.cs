using Idempotency.Diagnostics;
using Idempotency.Storage;

namespace Idempotency.Processing;

/// <summary>
/// <see cref="ClaimTiming.BeforeHandler"/>: the key is claimed in the store's transaction, the handler runs in it only
/// when the claim succeeded, and the completion commits with the handler's writes. Once most messages are duplicates
/// (a replay) the key is looked up first.
/// </summary>
internal sealed class ClaimBeforeHandler(ProcessingSteps steps, IIdempotentMessageHandler handler) : ClaimStrategy(steps)
{
    /// <inheritdoc/>
    protected override async ValueTask<ProcessingResult> RunAsync(IncomingMessage message, ClaimRequest claim, bool storePosition, Attempt attempt, CancellationToken cancellationToken)
    {
        var results = Steps.Results;

        // Claiming a duplicate costs a transaction and a rollback, a look-up one read: once most messages are
        // duplicates (a replay), look up first.
        var lookedUp = Steps.Lookup is not null && !message.KeyLookedUp && Steps.DuplicateRate.IsAbove(DuplicateRate.ClaimFirstThreshold);
        if (lookedUp && await Steps.LookUpAsync(Steps.Lookup!, claim, cancellationToken).ConfigureAwait(false) is { } found)
        {
            return results.NotClaimed(message, claim, found);
        }

        var transaction = attempt.Transaction = await Steps.BeginAsync(cancellationToken).ConfigureAwait(false);
        var started = Steps.Time.GetTimestamp();
        var claimed = await transaction.ClaimAsync(claim, cancellationToken).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(Steps.Store.Name, "claim", Steps.Time.GetElapsedTime(started));
        if (!(lookedUp || message.KeyLookedUp) || claimed.Status != ClaimStatus.Claimed)
        {
            // A looked-up message was counted by its look-up; count it again only if a duplicate raced past it.
            Steps.DuplicateRate.Record(claimed.Status == ClaimStatus.AlreadyProcessed);
        }

        if (claimed.Status != ClaimStatus.Claimed)
        {
            await transaction.RollbackAsync(cancellationToken).ConfigureAwait(false);
            return results.NotClaimed(message, claim, claimed);
        }

        var context = new MessageContext(message, claim.Key, Steps.HandlerName, transaction);
        var handlerStarted = Steps.Time.GetTimestamp();
        try
        {
            await handler.HandleAsync(context, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
        {
            return await Steps.HandlerThrewAsync(message, claim, transaction, exception).ConfigureAwait(false);
        }

        var duration = Steps.Time.GetElapsedTime(handlerStarted);
        IdempotencyMetrics.RecordHandlerDuration(message, Steps.HandlerName, duration);
        attempt.HandlerRan = true;
        await Steps.CommitAsync(transaction, [new CompletionRecord(claim, duration, context.Result) { Position = storePosition ? message.Position : null }], context.Outbox).ConfigureAwait(false);
        return new ProcessingResult(message, ProcessingOutcome.Processed) { PayloadFingerprint = claim.Fingerprint };
    }
}
