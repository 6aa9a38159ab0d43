using System.Diagnostics;
using Idempotency.Diagnostics;
using Idempotency.Processing;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency;

/// <summary>
/// The broker-agnostic pipeline: for each message it claims the key, runs the handler and records completion in one
/// store transaction, and reports an outcome the adapter maps to acknowledge, retry or dead-letter.
/// </summary>
/// <remarks>
/// Thread-safe: adapters call it concurrently for different partitions, queues or groups. The adapter acknowledges a
/// message only when <see cref="ProcessingResult.IsCommitted"/> is <see langword="true"/>.
/// </remarks>
public sealed class IdempotentProcessor
{
    private readonly IIdempotencyStore _store;
    private readonly IdempotencyOptions _options;
    private readonly TimeProvider _time;
    private readonly ProcessingSteps _steps;
    private readonly ClaimStrategy _claimStrategy;
    private readonly BatchIsolation _batches;

    /// <summary>Creates the pipeline for one handler.</summary>
    /// <param name="store">Where keys are claimed; its transaction is the one the handler writes in.</param>
    /// <param name="handler">The handler; an <see cref="IIdempotentBatchHandler"/> also gets whole batches.</param>
    /// <param name="options">The handler's options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock; defaults to <see cref="TimeProvider.System"/>.</param>
    /// <exception cref="ArgumentNullException">A required argument is null.</exception>
    /// <exception cref="ArgumentException">The options are invalid, or ask for <see cref="ClaimTiming.AtCommit"/> from a store that cannot do it.</exception>
    public IdempotentProcessor(
        IIdempotencyStore store,
        IIdempotentMessageHandler handler,
        IdempotencyOptions options,
        ILogger? logger = null,
        TimeProvider? timeProvider = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(handler);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.MaxKeyBytes > store.MaxKeyBytes)
        {
            throw new ArgumentException(
                $"{nameof(IdempotencyOptions.MaxKeyBytes)} is {options.MaxKeyBytes}, but the '{store.Name}' store holds keys of at most {store.MaxKeyBytes} UTF-8 bytes. Lower {nameof(IdempotencyOptions.MaxKeyBytes)}.",
                nameof(options));
        }

        _store = store;

        // A private copy: changing the caller's options object later changes nothing here.
        _options = options.Copy();
        _time = timeProvider ?? TimeProvider.System;
        var log = logger ?? NullLogger.Instance;
        _steps = new ProcessingSteps(store, _options, new ProcessingResults(store, _options, log), _time);
        _claimStrategy = options.ClaimTiming == ClaimTiming.AtCommit
            ? new ClaimAtCommit(_steps, handler, store as IDeferredClaimStore ?? throw new ArgumentException(
                $"{nameof(IdempotencyOptions.ClaimTiming)} {nameof(ClaimTiming.AtCommit)} needs a store that can claim keys at commit (PostgreSQL, in-memory); the '{store.Name}' store cannot. Use {nameof(ClaimTiming.BeforeHandler)}.",
                nameof(options)))
            : new ClaimBeforeHandler(_steps, handler);
        _batches = new BatchIsolation(_steps, new BatchAttempt(_steps, handler, handler as IIdempotentBatchHandler, ProcessAloneAsync, log), log);
    }

    /// <summary>Gets the handler name that scopes keys.</summary>
    public string HandlerName => _options.HandlerName;

    /// <summary>Gets a copy of the options this pipeline was built with; changing it changes nothing.</summary>
    public IdempotencyOptions Options => _options.Copy();

    /// <summary>Gets how long to wait between probes while the store is down or misconfigured.</summary>
    public BackoffOptions StoreUnavailableBackoff => _options.StoreUnavailableBackoff;

    /// <summary>Decides what an adapter does with a result, by this pipeline's options.</summary>
    /// <param name="result">The result.</param>
    /// <param name="attempt">The 1-based handler attempt that produced it (attempts are spent only by the handler).</param>
    /// <returns>The decision.</returns>
    public Delivery.DeliveryDecision Decide(ProcessingResult result, int attempt) =>
        Delivery.DeliveryPolicy.Decide(result, attempt, _options);

    /// <summary>Gets the store.</summary>
    public IIdempotencyStore Store => _store;

    /// <summary>
    /// Gets a value indicating whether more than a quarter of recent single messages were duplicates and the store can
    /// look keys up: an adapter with several messages queued then pays one <see cref="LookUpProcessedAsync"/> for all
    /// of them instead of a transaction (or a look-up) each.
    /// </summary>
    public bool DuplicatesLikely => _steps.Lookup is not null && _steps.DuplicateRate.IsHigh;

    /// <summary>
    /// Looks up the keys of several messages in one step, without claiming them, and settles those already committed:
    /// for them the result is what <see cref="ProcessAsync"/> would have returned (<see cref="ProcessingOutcome.Duplicate"/>,
    /// or <see cref="ProcessingOutcome.PayloadMismatch"/> by policy). The others get <see langword="null"/>: process them
    /// with <see cref="ProcessAsync"/>, marked <see cref="IncomingMessage.KeyLookedUp"/>.
    /// </summary>
    /// <param name="messages">Messages of this handler, such as those queued behind one another on a partition.</param>
    /// <param name="cancellationToken">Cancels the look-up.</param>
    /// <returns>One entry per message, in order. All <see langword="null"/> when the store cannot look keys up or is unreachable (processing then finds out).</returns>
    /// <exception cref="OperationCanceledException">Cancelled.</exception>
    public async ValueTask<IReadOnlyList<ProcessingResult?>> LookUpProcessedAsync(IReadOnlyList<IncomingMessage> messages, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(messages);
        var results = await LookUpCoreAsync(messages, cancellationToken).ConfigureAwait(false);
        foreach (var result in results)
        {
            if (result is not null)
            {
                Finish(result, activity: null);
            }
        }

        return results;
    }

    /// <summary>
    /// <see cref="LookUpProcessedAsync"/> without reporting the results (metrics): the caller reports those it hands
    /// back, so a message it leaves for a later call is counted once, when it is handed back then.
    /// </summary>
    private async ValueTask<ProcessingResult?[]> LookUpCoreAsync(IReadOnlyList<IncomingMessage> messages, CancellationToken cancellationToken)
    {
        var results = new ProcessingResult?[messages.Count];
        if (_steps.Lookup is not { } lookup || messages.Count == 0)
        {
            return results;
        }

        var claims = new List<ClaimRequest>(messages.Count);
        var indexes = new List<int>(messages.Count);
        for (var i = 0; i < messages.Count; i++)
        {
            // Invalid keys are left to ProcessAsync, which rejects them with the reason.
            if (messages[i].KeyError is null && IdempotencyKey.GetValidationError(messages[i].Key, _options.MaxKeyBytes) is null)
            {
                claims.Add(_steps.CreateClaim(messages[i]));
                indexes.Add(i);
            }
        }

        if (claims.Count == 0)
        {
            return results;
        }

        IReadOnlyList<ClaimResult?> found;
        try
        {
            var started = _time.GetTimestamp();
            found = await lookup.FindProcessedBatchAsync(claims, cancellationToken).ConfigureAwait(false);
            IdempotencyMetrics.RecordStoreOperation(_store.Name, "lookup", _time.GetElapsedTime(started));
        }
#pragma warning disable CA1031 // A look-up is a shortcut: whatever failed, processing finds out and classifies it.
        catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
#pragma warning restore CA1031
        {
            return results;
        }

        for (var i = 0; i < claims.Count; i++)
        {
            _steps.DuplicateRate.Record(found[i] is not null);
            if (found[i] is { } processed)
            {
                results[indexes[i]] = _steps.Results.NotClaimed(messages[indexes[i]], claims[i], processed);
            }
        }

        return results;
    }

    /// <summary>Processes one message in its own store transaction.</summary>
    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">Cancels processing; a cancelled message is rolled back and must not be acknowledged.</param>
    /// <returns>The outcome.</returns>
    /// <exception cref="OperationCanceledException">Cancelled; nothing was committed by this call.</exception>
    public async ValueTask<ProcessingResult> ProcessAsync(IncomingMessage message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        using var activity = StartActivity(message);
        IdempotencyMetrics.AddInFlight(message, HandlerName, 1);
        try
        {
            var result = await ProcessAloneAsync(message, storePosition: true, cancellationToken).ConfigureAwait(false);
            Finish(result, activity);
            return result;
        }
        finally
        {
            IdempotencyMetrics.AddInFlight(message, HandlerName, -1);
        }
    }

    /// <summary>
    /// Processes several messages in one store transaction: all claims in one round trip in sorted key order, the
    /// handler for each new message, one commit. A failing handler does not undo the others: the batch is redone
    /// without it (and message by message after a second failure).
    /// </summary>
    /// <param name="messages">The messages, in delivery order; handlers run in this order.</param>
    /// <param name="cancellationToken">Cancels processing; nothing uncommitted may be acknowledged.</param>
    /// <returns>One result per message, in the same order.</returns>
    /// <exception cref="OperationCanceledException">Cancelled; results already committed stay committed, and a redelivery will see them as duplicates.</exception>
    public ValueTask<IReadOnlyList<ProcessingResult>> ProcessBatchAsync(IReadOnlyList<IncomingMessage> messages, CancellationToken cancellationToken = default) =>
        ProcessBatchCoreAsync(messages, inOrder: false, cancellationToken);

    /// <summary>
    /// Processes the messages of one ordered lane (a Kafka partition, say) in one store transaction, up to the first
    /// message that does not commit: the results cover the messages up to and including that one, which comes last; the
    /// messages after it were not processed (nothing was claimed or committed for them). Settle that last result
    /// (retry it, dead-letter it) before processing the rest, so that no message takes effect before an earlier one.
    /// </summary>
    /// <param name="messages">The messages, in delivery order; handlers run in this order.</param>
    /// <param name="cancellationToken">Cancels processing; nothing uncommitted may be acknowledged.</param>
    /// <returns>One result per message of a prefix of <paramref name="messages"/>, in order: all of them when every one committed (or, rarely, a committed prefix ending at a later copy of a key with another payload whose stored row has no fingerprint: process the rest next).</returns>
    /// <exception cref="OperationCanceledException">Cancelled; results already committed stay committed, and a redelivery will see them as duplicates.</exception>
    public ValueTask<IReadOnlyList<ProcessingResult>> ProcessBatchInOrderAsync(IReadOnlyList<IncomingMessage> messages, CancellationToken cancellationToken = default) =>
        ProcessBatchCoreAsync(messages, inOrder: true, cancellationToken);

    private async ValueTask<IReadOnlyList<ProcessingResult>> ProcessBatchCoreAsync(IReadOnlyList<IncomingMessage> messages, bool inOrder, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            return [];
        }

        if (messages.Count == 1)
        {
            return [await ProcessAsync(messages[0], cancellationToken).ConfigureAwait(false)];
        }

        // A replay (most recent keys committed already): one look-up settles the batch's duplicates without a transaction;
        // only the rest is claimed. Claiming a batch of duplicates costs a transaction, an insert attempt per key, a read
        // of the stored rows and a rollback.
        if (_steps.Lookup is not null && _steps.DuplicateRate.IsAbove(DuplicateRate.ClaimFirstThreshold))
        {
            return await ProcessBatchLookedUpAsync(messages, inOrder, cancellationToken).ConfigureAwait(false);
        }

        return await ProcessBatchClaimedAsync(messages, keysLookedUp: false, inOrder, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Looks the batch's keys up first; the messages not found are processed as one batch, results kept in order.</summary>
    private async ValueTask<IReadOnlyList<ProcessingResult>> ProcessBatchLookedUpAsync(IReadOnlyList<IncomingMessage> messages, bool inOrder, CancellationToken cancellationToken)
    {
        var found = await LookUpCoreAsync(messages, cancellationToken).ConfigureAwait(false);

        // In order, a looked-up key that settles without committing (a payload mismatch) ends the batch there.
        var end = messages.Count;
        for (var i = 0; inOrder && i < messages.Count; i++)
        {
            if (found[i] is { IsCommitted: false })
            {
                end = i + 1;
                break;
            }
        }

        // Found keys are reported here, up to the end: messages after it come back in a later call and are reported then.
        var rest = new List<IncomingMessage>(end);
        for (var i = 0; i < end; i++)
        {
            if (found[i] is { } known)
            {
                Finish(known, activity: null);
            }
            else
            {
                rest.Add(messages[i]);
            }
        }

        if (rest.Count == 0 && end == messages.Count)
        {
            // A replay's batch: every key committed already.
            return found!;
        }

        // Even one message left goes the batch way: the one-message path would look its key up a second time.
        var processed = rest.Count == 0 ? [] : await ProcessBatchClaimedAsync(rest, keysLookedUp: true, inOrder, cancellationToken).ConfigureAwait(false);
        var results = new List<ProcessingResult>(end);
        var next = 0;
        for (var i = 0; i < end; i++)
        {
            if (found[i] is { } known)
            {
                results.Add(known);
            }
            else if (next < processed.Count)
            {
                results.Add(processed[next++]);
            }
            else
            {
                // In order, the claimed rest ended before this message.
                break;
            }

            if (inOrder && !results[^1].IsCommitted)
            {
                break;
            }
        }

        return results;
    }

    /// <summary>Claims and processes a batch in one store transaction, isolating failures.</summary>
    /// <param name="messages">The messages, in delivery order.</param>
    /// <param name="keysLookedUp">Whether their keys were just looked up and not found (counted in the duplicate rate already).</param>
    /// <param name="inOrder">Whether the batch ends at the first message that does not commit (<see cref="ProcessBatchInOrderAsync"/>).</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    private async ValueTask<IReadOnlyList<ProcessingResult>> ProcessBatchClaimedAsync(IReadOnlyList<IncomingMessage> messages, bool keysLookedUp, bool inOrder, CancellationToken cancellationToken)
    {
        var batch = new BatchState(messages.Count) { KeysLookedUp = keysLookedUp, InOrder = inOrder };
        foreach (var message in messages)
        {
            IdempotencyMetrics.AddInFlight(message, HandlerName, 1);
        }

        try
        {
            await _batches.ProcessAsync(messages, batch, cancellationToken).ConfigureAwait(false);
            var results = new ProcessingResult[batch.End];
            for (var i = 0; i < results.Length; i++)
            {
                results[i] = batch.Results[i] ?? throw new UnreachableException("Every message of a batch up to its end gets a result.");
                Finish(results[i], activity: null);
            }

            return results;
        }
        finally
        {
            foreach (var message in messages)
            {
                IdempotencyMetrics.AddInFlight(message, HandlerName, -1);
            }
        }
    }

    /// <summary>Processes one message alone, in its own store transaction, by the claim strategy of the options.</summary>
    /// <param name="message">The message.</param>
    /// <param name="storePosition">Whether its consumer position may be recorded: not inside a batch once an earlier message is unsettled.</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    private async ValueTask<ProcessingResult> ProcessAloneAsync(IncomingMessage message, bool storePosition, CancellationToken cancellationToken) =>
        _steps.Results.RejectInvalidKey(message)
            ?? await _claimStrategy.ProcessAsync(message, _steps.CreateClaim(message), storePosition, cancellationToken).ConfigureAwait(false);

    private Activity? StartActivity(IncomingMessage message)
    {
        var source = IdempotencyTelemetry.ActivitySource;
        if (!source.HasListeners())
        {
            return null;
        }

        ActivityContext parent = default;
        if (message.Headers is { } headers && headers.TryGetValue("traceparent", out var traceParent))
        {
            headers.TryGetValue("tracestate", out var traceState);
            _ = ActivityContext.TryParse(traceParent, traceState, isRemote: true, out parent);
        }

        var activity = source.StartActivity($"process {message.Destination}", ActivityKind.Consumer, parent);
        if (activity is { IsAllDataRequested: true })
        {
            activity.SetTag(IdempotencyTags.Broker, message.Broker);
            activity.SetTag(IdempotencyTags.Destination, message.Destination);
            activity.SetTag(IdempotencyTags.Handler, HandlerName);
            activity.SetTag(IdempotencyTags.Store, _store.Name);
            activity.SetTag(IdempotencyTags.Key, message.Key);
            activity.SetTag("messaging.operation.type", "process");
        }

        return activity;
    }

    private void Finish(ProcessingResult result, Activity? activity)
    {
        IdempotencyMetrics.RecordResult(result, HandlerName, _time.GetUtcNow());
        if (activity is not null)
        {
            activity.SetTag(IdempotencyTags.Outcome, IdempotencyMetrics.OutcomeName(result.Outcome));
            if (result.Outcome is ProcessingOutcome.Failed or ProcessingOutcome.StoreUnavailable or ProcessingOutcome.StoreMisconfigured or ProcessingOutcome.LeaseLost or ProcessingOutcome.InvalidKey or ProcessingOutcome.PayloadMismatch)
            {
                activity.SetStatus(ActivityStatusCode.Error, result.Exception?.Message);
            }
        }
    }
}
