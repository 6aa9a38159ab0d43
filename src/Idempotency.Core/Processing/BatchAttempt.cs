using Idempotency.Diagnostics;
using Idempotency.Outbox;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;

namespace Idempotency.Processing;

/// <summary>
/// One attempt at a batch in one store transaction: every pending key claimed in one round trip in sorted key order,
/// the handlers in delivery order, one commit. A failing per-message handler ends the attempt naming that message; a
/// failing set-based handler, or a commit the store refused for the handlers' writes, sends the messages one by one.
/// </summary>
internal sealed class BatchAttempt(
    ProcessingSteps steps,
    IIdempotentMessageHandler handler,
    IIdempotentBatchHandler? batchHandler,
    Func<IncomingMessage, bool, CancellationToken, ValueTask<ProcessingResult>> processAlone,
    ILogger logger)
{
    /// <summary>Runs one attempt of the batch; returns the index of a message whose handler failed (already given its result), or -1 when the attempt ended.</summary>
    /// <param name="messages">The batch.</param>
    /// <param name="batch">Its state; results are written there.</param>
    /// <param name="pending">The first copies not yet settled; cleared when the attempt settles them all.</param>
    /// <param name="useBatchHandler">Whether a set-based handler may take the batch (only on the first attempt).</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    public async ValueTask<int> RunAsync(IReadOnlyList<IncomingMessage> messages, BatchState batch, List<int> pending, bool useBatchHandler, CancellationToken cancellationToken)
    {
        var results = steps.Results;
        IIdempotencyTransaction? transaction = null;
        var committing = false;
        try
        {
            transaction = await steps.BeginAsync(cancellationToken).ConfigureAwait(false);

            // Sorted claims: concurrent batches over overlapping keys lock rows in the same order and cannot deadlock.
            var order = pending.ToArray();
            Array.Sort(order, (a, b) => string.CompareOrdinal(batch.Claims[a].Key, batch.Claims[b].Key));
            var requests = new ClaimRequest[order.Length];
            for (var i = 0; i < order.Length; i++)
            {
                requests[i] = batch.Claims[order[i]];
            }

            var started = steps.Time.GetTimestamp();
            var claimed = await transaction.ClaimBatchAsync(requests, cancellationToken).ConfigureAwait(false);
            IdempotencyMetrics.RecordStoreOperation(steps.Store.Name, "claim", steps.Time.GetElapsedTime(started));

            var contexts = new List<MessageContext>(order.Length);
            var contextIndex = new List<int>(order.Length);
            for (var i = 0; i < order.Length; i++)
            {
                var index = order[i];
                var duplicate = claimed[i].Status == ClaimStatus.AlreadyProcessed;
                if (useBatchHandler && (!batch.KeysLookedUp || duplicate))
                {
                    // The first attempt only (a redo claims the same keys again): how many of these were duplicates
                    // decides whether the next batch is looked up before it is claimed.
                    steps.DuplicateRate.Record(duplicate);
                }

                if (claimed[i].Status == ClaimStatus.Claimed)
                {
                    batch.Results[index] = null;
                    contextIndex.Add(index);
                }
                else
                {
                    batch.Results[index] = results.NotClaimed(messages[index], requests[i], claimed[i]);
                }
            }

            // Handlers run in delivery order, which per-partition and per-group ordering relies on.
            contextIndex.Sort();
            if (batch.InOrder && FirstNotCommitted(batch, order) is var stop and >= 0 && contextIndex.Count > 0 && contextIndex[^1] > stop)
            {
                // In order, a key another consumer still holds (or a payload mismatch) ends the batch: the messages after it
                // must not commit first. Their claims are in this transaction, so it is redone without them.
                await ProcessingSteps.RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                return stop;
            }
            foreach (var index in contextIndex)
            {
                contexts.Add(new MessageContext(messages[index], batch.Claims[index].Key, steps.HandlerName, transaction));
            }

            if (contexts.Count == 0)
            {
                await transaction.RollbackAsync(cancellationToken).ConfigureAwait(false);
                return -1;
            }

            var durations = new TimeSpan[contexts.Count];
            if (useBatchHandler && batchHandler is not null)
            {
                var handlerStarted = steps.Time.GetTimestamp();
                try
                {
                    await batchHandler.HandleBatchAsync(new BatchContext(contexts, transaction, steps.HandlerName), cancellationToken).ConfigureAwait(false);
                }
                catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
                {
                    if (await steps.IsTransactionBrokenAsync(transaction).ConfigureAwait(false))
                    {
                        throw new StoreConnectionBrokenException("The store's connection broke while the batch handler ran.", exception);
                    }

                    // A set-based handler cannot say which message broke it: find out one message at a time.
                    await ProcessingSteps.RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                    await ProcessEachAloneAsync(messages, batch, contextIndex, cancellationToken).ConfigureAwait(false);
                    pending.Clear();
                    return -1;
                }

                Array.Fill(durations, steps.Time.GetElapsedTime(handlerStarted) / contexts.Count);
            }
            else
            {
                for (var i = 0; i < contexts.Count; i++)
                {
                    var handlerStarted = steps.Time.GetTimestamp();
                    try
                    {
                        await handler.HandleAsync(contexts[i], cancellationToken).ConfigureAwait(false);
                    }
                    catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
                    {
                        if (await steps.IsTransactionBrokenAsync(transaction).ConfigureAwait(false))
                        {
                            throw new StoreConnectionBrokenException("The store's connection broke while a handler of the batch ran.", exception);
                        }

                        await ProcessingSteps.RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                        var failed = contextIndex[i];
                        batch.Results[failed] = results.HandlerFailed(messages[failed], batch.Claims[failed], exception);
                        return failed;
                    }

                    durations[i] = steps.Time.GetElapsedTime(handlerStarted);
                }
            }

            var completions = new CompletionRecord[contexts.Count];
            var firstUnsettled = batch.FirstUnsettled();
            List<OutboxMessage>? outbox = null;
            for (var i = 0; i < contexts.Count; i++)
            {
                IdempotencyMetrics.RecordHandlerDuration(contexts[i].Message, steps.HandlerName, durations[i]);
                completions[i] = new CompletionRecord(batch.Claims[contextIndex[i]], durations[i], contexts[i].Result) { Position = contextIndex[i] <= firstUnsettled ? contexts[i].Message.Position : null };
                if (contexts[i].Outbox.Count > 0)
                {
                    (outbox ??= []).AddRange(contexts[i].Outbox);
                }
            }

            committing = true;
            await steps.CommitAsync(transaction, completions, (IReadOnlyList<OutboxMessage>?)outbox ?? []).ConfigureAwait(false);
            foreach (var index in contextIndex)
            {
                batch.Results[index] = new ProcessingResult(messages[index], ProcessingOutcome.Processed) { PayloadFingerprint = batch.Claims[index].Fingerprint };
            }

            return -1;
        }
        catch (ClaimLostException lost)
        {
            Log.LeaseLost(logger, lost.Key, steps.HandlerName);
            batch.MarkUnresolved(pending, index => new ProcessingResult(messages[index], ProcessingOutcome.LeaseLost) { PayloadFingerprint = batch.Claims[index].Fingerprint });
            return -1;
        }
        catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken) && !(committing && results.ClassifyStoreFailure(exception).Kind == StoreFailureKind.WriteRejected))
        {
            if (transaction is not null)
            {
                await ProcessingSteps.RollbackQuietlyAsync(transaction).ConfigureAwait(false);
            }

            var first = pending[0];
            var failure = results.StoreWorkFailed(messages[first], batch.Claims[first], exception, handlerRan: false);
            batch.MarkUnresolved(pending, index => new ProcessingResult(messages[index], failure.Outcome) { Exception = exception, StoreFailure = failure.StoreFailure, PayloadFingerprint = batch.Claims[index].Fingerprint });
            return -1;
        }
        catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
        {
            // The store refused the handlers' writes at commit (a deferred constraint, say): isolate it message by message.
            if (transaction is not null)
            {
                await ProcessingSteps.RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                await transaction.DisposeAsync().ConfigureAwait(false);
                transaction = null;
            }

            Log.BatchFailed(logger, exception, pending.Count, steps.HandlerName);
            await ProcessEachAloneAsync(messages, batch, pending, cancellationToken).ConfigureAwait(false);
            pending.Clear();
            return -1;
        }
        finally
        {
            if (transaction is not null)
            {
                await transaction.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Processes messages of the batch one at a time, each in its own transaction, in delivery order; in an ordered batch
    /// it stops after the first that does not commit (the later ones must not take effect before it).
    /// </summary>
    /// <param name="messages">The batch.</param>
    /// <param name="batch">Its state; results are written there.</param>
    /// <param name="indexes">The messages to process, ascending.</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    public async ValueTask ProcessEachAloneAsync(IReadOnlyList<IncomingMessage> messages, BatchState batch, IEnumerable<int> indexes, CancellationToken cancellationToken)
    {
        foreach (var index in indexes)
        {
            if (batch.StopsAt(index, await processAlone(messages[index], batch.AllSettledBefore(index), cancellationToken).ConfigureAwait(false)))
            {
                return;
            }
        }
    }

    /// <summary>The smallest index among <paramref name="claimedOrder"/> whose claim settled it without committing, or -1.</summary>
    private static int FirstNotCommitted(BatchState batch, int[] claimedOrder)
    {
        var first = -1;
        foreach (var index in claimedOrder)
        {
            if (batch.Results[index] is { IsCommitted: false } && (first < 0 || index < first))
            {
                first = index;
            }
        }

        return first;
    }
}
