using Idempotency.Diagnostics;
using Microsoft.Extensions.Logging;

namespace Idempotency.Processing;

/// <summary>
/// Processes a batch so that one failing message does not undo the others: the batch is redone without it, and
/// message by message after a second failure. Later copies of a key inside the batch follow the first copy's fate,
/// each compared with the stored payload by its own fingerprint.
/// </summary>
/// <remarks>
/// An ordered batch (<see cref="BatchState.InOrder"/>, one partition) is redone only with the messages before the one
/// that failed, and ends there: committing the later ones first would apply their effects before the failed one's
/// retry, out of order.
/// </remarks>
internal sealed class BatchIsolation(
    ProcessingSteps steps,
    BatchAttempt attempt,
    ILogger logger)
{
    /// <summary>Processes the batch, writing every message's result into <paramref name="batch"/>.</summary>
    /// <param name="messages">The messages, in delivery order.</param>
    /// <param name="batch">Its state, sized for the messages.</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    public async ValueTask ProcessAsync(IReadOnlyList<IncomingMessage> messages, BatchState batch, CancellationToken cancellationToken)
    {
        // The first message of each key is claimed; later ones with the same key inside the batch follow its fate.
        var firstIndexByKey = new Dictionary<string, int>(messages.Count, StringComparer.Ordinal);
        var pending = new List<int>(messages.Count);
        for (var i = 0; i < messages.Count; i++)
        {
            if (steps.Results.RejectInvalidKey(messages[i]) is { } rejected)
            {
                if (batch.StopsAt(i, rejected))
                {
                    break;
                }

                continue;
            }

            batch.Claims[i] = steps.CreateClaim(messages[i]);
            if (firstIndexByKey.TryGetValue(messages[i].Key!, out var first))
            {
                batch.FollowerOf[i] = first;
                if (batch.InOrder && !steps.MismatchCommits && !batch.Claims[i].Fingerprint.Span.SequenceEqual(batch.Claims[first].Fingerprint.Span))
                {
                    // In order, a copy with another payload is a payload mismatch that does not commit, found only once its
                    // first copy committed: the batch ends with it, so no later message commits before it settles.
                    batch.End = i + 1;
                    break;
                }
            }
            else
            {
                firstIndexByKey.Add(messages[i].Key!, i);
                pending.Add(i);
            }
        }

        var failures = 0;
        while (pending.Count > 0)
        {
            if (failures >= 2)
            {
                // Several poison messages in one batch: isolating them one redo at a time would cost a round per failure.
                await attempt.ProcessEachAloneAsync(messages, batch, pending, cancellationToken).ConfigureAwait(false);
                break;
            }

            var failedIndex = await attempt.RunAsync(messages, batch, pending, useBatchHandler: failures == 0, cancellationToken).ConfigureAwait(false);
            if (failedIndex < 0)
            {
                break;
            }

            if (batch.InOrder)
            {
                pending.RemoveAll(index => index >= failedIndex);
            }
            else
            {
                pending.Remove(failedIndex);
            }

            failures++;
            Log.BatchRedo(logger, pending.Count, steps.HandlerName, messages[failedIndex].Key!);
        }

        // In order, the batch ends at the first message that did not commit; a copy after it was not processed.
        for (var i = 0; i < batch.End; i++)
        {
            if (batch.FollowerOf[i] is { } first)
            {
                batch.Results[i] = FollowerResult(messages[i], batch.Claims[i], batch.Results[first]!);
            }

            if (batch.InOrder && batch.Results[i] is { IsCommitted: false })
            {
                batch.End = i + 1;
            }
        }
    }

    private ProcessingResult FollowerResult(IncomingMessage message, Storage.ClaimRequest claim, ProcessingResult first)
    {
        if (first.Outcome == ProcessingOutcome.Failed)
        {
            // The first copy's handler failed; this copy's handler never ran, so it must not spend an attempt (the
            // adapters count attempts per key or per message id): it goes back untried, as a key held elsewhere does.
            return new ProcessingResult(message, ProcessingOutcome.InProgress) { PayloadFingerprint = claim.Fingerprint };
        }

        if (!first.IsCommitted && first.Outcome != ProcessingOutcome.PayloadMismatch)
        {
            // The first copy did not commit, so neither does this one: same outcome, same fate at the broker.
            return new ProcessingResult(message, first.Outcome) { Exception = first.Exception, StoreFailure = first.StoreFailure, PayloadFingerprint = claim.Fingerprint };
        }

        // The key is committed: this copy is compared with the stored payload by its own fingerprint, as it would be alone.
        var stored = first.Outcome == ProcessingOutcome.Processed ? first.PayloadFingerprint : first.StoredFingerprint;
        return steps.Results.Duplicate(message, claim, stored, first.StoredResult);
    }
}
