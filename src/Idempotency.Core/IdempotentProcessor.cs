using System.Diagnostics;
using Idempotency.Diagnostics;
using Idempotency.Outbox;
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
    private readonly IIdempotentMessageHandler _handler;
    private readonly IIdempotentBatchHandler? _batchHandler;
    private readonly IdempotencyOptions _options;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly IDeferredClaimStore? _deferredClaimStore;
    private readonly IProcessedKeyLookup? _lookup;
    private readonly DuplicateRate _duplicateRate = new();

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
        _handler = handler;
        _batchHandler = handler as IIdempotentBatchHandler;

        // A private copy: changing the caller's options object later changes nothing here.
        _options = options.Copy();
        _logger = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _lookup = store as IProcessedKeyLookup;
        if (options.ClaimTiming == ClaimTiming.AtCommit)
        {
            _deferredClaimStore = store as IDeferredClaimStore ?? throw new ArgumentException(
                $"{nameof(IdempotencyOptions.ClaimTiming)} {nameof(ClaimTiming.AtCommit)} needs a store that can claim keys at commit (PostgreSQL, in-memory); the '{store.Name}' store cannot. Use {nameof(ClaimTiming.BeforeHandler)}.",
                nameof(options));
        }
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
    public bool DuplicatesLikely => _lookup is not null && _duplicateRate.IsHigh;

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
        var results = new ProcessingResult?[messages.Count];
        if (_lookup is null || messages.Count == 0)
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
                claims.Add(CreateClaim(messages[i]));
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
            found = await _lookup.FindProcessedBatchAsync(claims, cancellationToken).ConfigureAwait(false);
            IdempotencyMetrics.RecordStoreOperation(_store.Name, "lookup", _time.GetElapsedTime(started));
        }
#pragma warning disable CA1031 // A look-up is a shortcut: whatever failed, processing finds out and classifies it.
        catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
#pragma warning restore CA1031
        {
            return results;
        }

        for (var i = 0; i < claims.Count; i++)
        {
            _duplicateRate.Record(found[i] is not null);
            if (found[i] is { } processed)
            {
                var message = messages[indexes[i]];
                var result = NotClaimed(message, claims[i], processed);
                Finish(result, activity: null);
                results[indexes[i]] = result;
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
            var result = await ProcessOneAsync(message, cancellationToken).ConfigureAwait(false);
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
    public async ValueTask<IReadOnlyList<ProcessingResult>> ProcessBatchAsync(IReadOnlyList<IncomingMessage> messages, CancellationToken cancellationToken = default)
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

        var batch = new BatchState(messages.Count);
        foreach (var message in messages)
        {
            IdempotencyMetrics.AddInFlight(message, HandlerName, 1);
        }

        try
        {
            await ProcessBatchCoreAsync(messages, batch, cancellationToken).ConfigureAwait(false);
            var results = new ProcessingResult[messages.Count];
            for (var i = 0; i < results.Length; i++)
            {
                results[i] = batch.Results[i] ?? throw new UnreachableException("Every message of a batch gets a result.");
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

    /// <param name="message">The message.</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    /// <param name="storePosition">Whether its consumer position may be recorded: not inside a batch once an earlier message is unsettled.</param>
    private async ValueTask<ProcessingResult> ProcessOneAsync(IncomingMessage message, CancellationToken cancellationToken, bool storePosition = true)
    {
        if (Prepare(message) is { } rejected)
        {
            return rejected;
        }

        var claim = CreateClaim(message);
        if (_deferredClaimStore is not null)
        {
            return await ProcessClaimingAtCommitAsync(message, claim, _deferredClaimStore, storePosition, cancellationToken).ConfigureAwait(false);
        }

        IIdempotencyTransaction? transaction = null;
        var handlerRan = false;
        try
        {
            // Claiming a duplicate costs a transaction and a rollback, a look-up one read: once most messages are
            // duplicates (a replay), look up first.
            var lookedUp = _lookup is not null && !message.KeyLookedUp && _duplicateRate.IsAbove(DuplicateRate.ClaimFirstThreshold);
            if (lookedUp && await LookUpAsync(_lookup!, claim, cancellationToken).ConfigureAwait(false) is { } found)
            {
                return NotClaimed(message, claim, found);
            }

            transaction = await BeginAsync(cancellationToken).ConfigureAwait(false);
            var started = _time.GetTimestamp();
            var claimed = await transaction.ClaimAsync(claim, cancellationToken).ConfigureAwait(false);
            IdempotencyMetrics.RecordStoreOperation(_store.Name, "claim", _time.GetElapsedTime(started));
            if (!(lookedUp || message.KeyLookedUp) || claimed.Status != ClaimStatus.Claimed)
            {
                // A looked-up message was counted by its look-up; count it again only if a duplicate raced past it.
                _duplicateRate.Record(claimed.Status == ClaimStatus.AlreadyProcessed);
            }

            if (claimed.Status != ClaimStatus.Claimed)
            {
                await transaction.RollbackAsync(cancellationToken).ConfigureAwait(false);
                return NotClaimed(message, claim, claimed);
            }

            var context = new MessageContext(message, claim.Key, HandlerName, transaction);
            var handlerStarted = _time.GetTimestamp();
            try
            {
                await _handler.HandleAsync(context, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
            {
                return await HandlerThrewAsync(message, claim, transaction, exception).ConfigureAwait(false);
            }

            var duration = _time.GetElapsedTime(handlerStarted);
            IdempotencyMetrics.RecordHandlerDuration(message, HandlerName, duration);
            handlerRan = true;
            await CommitAsync(transaction, [new CompletionRecord(claim, duration, context.Result) { Position = storePosition ? message.Position : null }], context.Outbox, cancellationToken).ConfigureAwait(false);
            return new ProcessingResult(message, ProcessingOutcome.Processed) { PayloadFingerprint = claim.Fingerprint };
        }
        catch (ClaimLostException)
        {
            return LeaseLost(message, claim);
        }
        catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
        {
            // The store's own work failed (begin, look-up, claim, commit): never the message's fault, unless the store
            // says it refused the handler's writes at commit.
            if (transaction is not null)
            {
                await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
            }

            return StoreWorkFailed(message, claim, exception, handlerRan);
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
    /// <see cref="ClaimTiming.AtCommit"/>: the handler runs first and the key is inserted, completed, with the commit; a
    /// key committed by someone else first turns the commit into a rollback. The key is looked up first only when a
    /// duplicate is likely.
    /// </summary>
    private async ValueTask<ProcessingResult> ProcessClaimingAtCommitAsync(IncomingMessage message, ClaimRequest claim, IDeferredClaimStore store, bool storePosition, CancellationToken cancellationToken)
    {
        IIdempotencyTransaction? transaction = null;
        var handlerRan = false;
        try
        {
            var lookedUp = !message.KeyLookedUp && (message.Redelivered || message.DeliveryAttempt > 1 || _duplicateRate.IsHigh);
            if (lookedUp && await LookUpAsync(store, claim, cancellationToken).ConfigureAwait(false) is { } found)
            {
                return NotClaimed(message, claim, found);
            }

            transaction = await BeginAsync(cancellationToken).ConfigureAwait(false);
            var deferred = transaction as IDeferredClaimTransaction
                ?? throw new InvalidOperationException($"The '{_store.Name}' store said it claims at commit but its transaction does not implement {nameof(IDeferredClaimTransaction)}.");
            var context = new MessageContext(message, claim.Key, HandlerName, transaction);
            var handlerStarted = _time.GetTimestamp();
            try
            {
                await _handler.HandleAsync(context, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
            {
                var failed = await HandlerThrewAsync(message, claim, transaction, exception).ConfigureAwait(false);
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
                catch (Exception lookUpFailure) when (!IsCancellation(lookUpFailure, cancellationToken))
                {
                    // Whether it was a duplicate cannot be learned now: the store's failure, not the handler's.
                    return StoreWorkFailed(message, claim, lookUpFailure, handlerRan: false);
                }

                if (processed is { } known)
                {
                    _duplicateRate.Record(true);
                    return NotClaimed(message, claim, known);
                }

                return failed;
            }

            handlerRan = true;
            var duration = _time.GetElapsedTime(handlerStarted);
            IdempotencyMetrics.RecordHandlerDuration(message, HandlerName, duration);
            var commitStarted = _time.GetTimestamp();

            // Once the commit is sent its outcome must be learned, so shutdown does not cancel it half way.
            var committed = await deferred.ClaimAndCommitAsync(new CompletionRecord(claim, duration, context.Result) { Position = storePosition ? message.Position : null }, context.Outbox, CancellationToken.None).ConfigureAwait(false);
            IdempotencyMetrics.RecordStoreOperation(_store.Name, "commit", _time.GetElapsedTime(commitStarted));
            if (!(lookedUp || message.KeyLookedUp) || committed.Status != ClaimStatus.Claimed)
            {
                // A looked-up message was counted by its look-up; count it again only if a duplicate raced past it.
                _duplicateRate.Record(committed.Status != ClaimStatus.Claimed);
            }
            return committed.Status == ClaimStatus.Claimed
                ? new ProcessingResult(message, ProcessingOutcome.Processed) { PayloadFingerprint = claim.Fingerprint }
                : NotClaimed(message, claim, committed);
        }
        catch (ClaimLostException)
        {
            return LeaseLost(message, claim);
        }
        catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
        {
            // The store's own work failed (look-up, begin, the claiming commit): never the message's fault, unless the
            // store says it refused the handler's writes at commit.
            if (transaction is not null)
            {
                await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
            }

            return StoreWorkFailed(message, claim, exception, handlerRan);
        }
        finally
        {
            if (transaction is not null)
            {
                await transaction.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>Looks one key up and counts the answer in the duplicate rate.</summary>
    private async ValueTask<ClaimResult?> LookUpAsync(IProcessedKeyLookup lookup, ClaimRequest claim, CancellationToken cancellationToken)
    {
        var started = _time.GetTimestamp();
        var found = await lookup.FindProcessedAsync(claim, cancellationToken).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(_store.Name, "lookup", _time.GetElapsedTime(started));
        _duplicateRate.Record(found is not null);
        return found;
    }

    private async ValueTask ProcessBatchCoreAsync(IReadOnlyList<IncomingMessage> messages, BatchState batch, CancellationToken cancellationToken)
    {
        // The first message of each key is claimed; later ones with the same key inside the batch follow its fate.
        var firstIndexByKey = new Dictionary<string, int>(StringComparer.Ordinal);
        var pending = new List<int>(messages.Count);
        for (var i = 0; i < messages.Count; i++)
        {
            if (Prepare(messages[i]) is { } rejected)
            {
                batch.Results[i] = rejected;
                continue;
            }

            batch.Claims[i] = CreateClaim(messages[i]);
            if (firstIndexByKey.TryGetValue(messages[i].Key!, out var first))
            {
                batch.FollowerOf[i] = first;
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
                foreach (var index in pending)
                {
                    batch.Results[index] = await ProcessOneAsync(messages[index], cancellationToken, AllSettledBefore(batch, index)).ConfigureAwait(false);
                }

                break;
            }

            var failedIndex = await TryBatchAsync(messages, batch, pending, useBatchHandler: failures == 0, cancellationToken).ConfigureAwait(false);
            if (failedIndex < 0)
            {
                break;
            }

            pending.Remove(failedIndex);
            failures++;
            Log.BatchRedo(_logger, pending.Count, HandlerName, messages[failedIndex].Key!);
        }

        for (var i = 0; i < messages.Count; i++)
        {
            if (batch.FollowerOf[i] is { } first)
            {
                batch.Results[i] = FollowerResult(messages[i], batch.Claims[i], batch.Results[first]!);
            }
        }
    }

    /// <summary>Runs one attempt of the batch; returns the index of a message whose handler failed (already given its result), or -1 when the attempt ended.</summary>
    private async ValueTask<int> TryBatchAsync(IReadOnlyList<IncomingMessage> messages, BatchState batch, List<int> pending, bool useBatchHandler, CancellationToken cancellationToken)
    {
        IIdempotencyTransaction? transaction = null;
        var committing = false;
        try
        {
            transaction = await BeginAsync(cancellationToken).ConfigureAwait(false);

            // Sorted claims: concurrent batches over overlapping keys lock rows in the same order and cannot deadlock.
            var order = pending.ToArray();
            Array.Sort(order, (a, b) => string.CompareOrdinal(batch.Claims[a].Key, batch.Claims[b].Key));
            var requests = new ClaimRequest[order.Length];
            for (var i = 0; i < order.Length; i++)
            {
                requests[i] = batch.Claims[order[i]];
            }

            var started = _time.GetTimestamp();
            var claimed = await transaction.ClaimBatchAsync(requests, cancellationToken).ConfigureAwait(false);
            IdempotencyMetrics.RecordStoreOperation(_store.Name, "claim", _time.GetElapsedTime(started));

            var contexts = new List<MessageContext>(order.Length);
            var contextIndex = new List<int>(order.Length);
            for (var i = 0; i < order.Length; i++)
            {
                var index = order[i];
                if (claimed[i].Status == ClaimStatus.Claimed)
                {
                    batch.Results[index] = null;
                    contextIndex.Add(index);
                }
                else
                {
                    batch.Results[index] = NotClaimed(messages[index], requests[i], claimed[i]);
                }
            }

            // Handlers run in delivery order, which per-partition and per-group ordering relies on.
            contextIndex.Sort();
            foreach (var index in contextIndex)
            {
                contexts.Add(new MessageContext(messages[index], batch.Claims[index].Key, HandlerName, transaction));
            }

            if (contexts.Count == 0)
            {
                await transaction.RollbackAsync(cancellationToken).ConfigureAwait(false);
                return -1;
            }

            var durations = new TimeSpan[contexts.Count];
            if (useBatchHandler && _batchHandler is not null)
            {
                var handlerStarted = _time.GetTimestamp();
                try
                {
                    await _batchHandler.HandleBatchAsync(new BatchContext(contexts, transaction, HandlerName), cancellationToken).ConfigureAwait(false);
                }
                catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
                {
                    if (await IsTransactionBrokenAsync(transaction).ConfigureAwait(false))
                    {
                        throw new StoreConnectionBrokenException("The store's connection broke while the batch handler ran.", exception);
                    }

                    // A set-based handler cannot say which message broke it: find out one message at a time.
                    await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                    foreach (var index in contextIndex)
                    {
                        batch.Results[index] = await ProcessOneAsync(messages[index], cancellationToken, AllSettledBefore(batch, index)).ConfigureAwait(false);
                    }

                    pending.Clear();
                    return -1;
                }

                Array.Fill(durations, _time.GetElapsedTime(handlerStarted) / contexts.Count);
            }
            else
            {
                for (var i = 0; i < contexts.Count; i++)
                {
                    var handlerStarted = _time.GetTimestamp();
                    try
                    {
                        await _handler.HandleAsync(contexts[i], cancellationToken).ConfigureAwait(false);
                    }
                    catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
                    {
                        if (await IsTransactionBrokenAsync(transaction).ConfigureAwait(false))
                        {
                            throw new StoreConnectionBrokenException("The store's connection broke while a handler of the batch ran.", exception);
                        }

                        await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                        var failed = contextIndex[i];
                        batch.Results[failed] = HandlerFailed(messages[failed], batch.Claims[failed], exception);
                        return failed;
                    }

                    durations[i] = _time.GetElapsedTime(handlerStarted);
                }
            }

            var completions = new CompletionRecord[contexts.Count];
            var firstUnsettled = FirstUnsettled(batch);
            List<OutboxMessage>? outbox = null;
            for (var i = 0; i < contexts.Count; i++)
            {
                IdempotencyMetrics.RecordHandlerDuration(contexts[i].Message, HandlerName, durations[i]);
                completions[i] = new CompletionRecord(batch.Claims[contextIndex[i]], durations[i], contexts[i].Result) { Position = contextIndex[i] <= firstUnsettled ? contexts[i].Message.Position : null };
                if (contexts[i].Outbox.Count > 0)
                {
                    (outbox ??= []).AddRange(contexts[i].Outbox);
                }
            }

            committing = true;
            await CommitAsync(transaction, completions, (IReadOnlyList<OutboxMessage>?)outbox ?? [], cancellationToken).ConfigureAwait(false);
            foreach (var index in contextIndex)
            {
                batch.Results[index] = new ProcessingResult(messages[index], ProcessingOutcome.Processed) { PayloadFingerprint = batch.Claims[index].Fingerprint };
            }

            return -1;
        }
        catch (ClaimLostException lost)
        {
            Log.LeaseLost(_logger, lost.Key, HandlerName);
            MarkUnresolved(batch, pending, index => new ProcessingResult(messages[index], ProcessingOutcome.LeaseLost) { PayloadFingerprint = batch.Claims[index].Fingerprint });
            return -1;
        }
        catch (Exception exception) when (!IsCancellation(exception, cancellationToken) && !(committing && ClassifyStoreFailure(exception).Kind == StoreFailureKind.WriteRejected))
        {
            if (transaction is not null)
            {
                await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
            }

            var first = pending[0];
            var failure = StoreWorkFailed(messages[first], batch.Claims[first], exception, handlerRan: false);
            MarkUnresolved(batch, pending, index => new ProcessingResult(messages[index], failure.Outcome) { Exception = exception, StoreFailure = failure.StoreFailure, PayloadFingerprint = batch.Claims[index].Fingerprint });
            return -1;
        }
        catch (Exception exception) when (!IsCancellation(exception, cancellationToken))
        {
            // The store refused the handlers' writes at commit (a deferred constraint, say): isolate it message by message.
            if (transaction is not null)
            {
                await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
                await transaction.DisposeAsync().ConfigureAwait(false);
                transaction = null;
            }

            Log.BatchFailed(_logger, exception, pending.Count, HandlerName);
            foreach (var index in pending)
            {
                batch.Results[index] = await ProcessOneAsync(messages[index], cancellationToken, AllSettledBefore(batch, index)).ConfigureAwait(false);
            }

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
    /// Whether every message before <paramref name="index"/> has settled (committed, or not yet known to have failed):
    /// a consumer position recorded past an unsettled message would let a restart skip it.
    /// </summary>
    private static bool AllSettledBefore(BatchState batch, int index) => index <= FirstUnsettled(batch);

    /// <summary>The index of the first message known not to have committed, or <see cref="int.MaxValue"/>.</summary>
    private static int FirstUnsettled(BatchState batch)
    {
        for (var i = 0; i < batch.Results.Length; i++)
        {
            if (batch.Results[i] is { IsCommitted: false })
            {
                return i;
            }
        }

        return int.MaxValue;
    }

    private static void MarkUnresolved(BatchState batch, List<int> pending, Func<int, ProcessingResult> create)
    {
        foreach (var index in pending)
        {
            if (batch.Results[index] is null || batch.Results[index]!.Outcome == ProcessingOutcome.Processed)
            {
                batch.Results[index] = create(index);
            }
        }

        pending.Clear();
    }

    private ProcessingResult FollowerResult(IncomingMessage message, ClaimRequest claim, ProcessingResult first)
    {
        if (!first.IsCommitted && first.Outcome != ProcessingOutcome.PayloadMismatch)
        {
            // The first copy did not commit, so neither does this one: same outcome, same fate at the broker.
            return new ProcessingResult(message, first.Outcome) { Exception = first.Exception, StoreFailure = first.StoreFailure, PayloadFingerprint = claim.Fingerprint };
        }

        // The key is committed: this copy is compared with the stored payload by its own fingerprint, as it would be alone.
        var stored = first.Outcome == ProcessingOutcome.Processed ? first.PayloadFingerprint : first.StoredFingerprint;
        return Duplicate(message, claim, stored, first.StoredResult);
    }

    private ProcessingResult NotClaimed(IncomingMessage message, ClaimRequest claim, ClaimResult claimed)
    {
        if (claimed.Status == ClaimStatus.HeldByAnother)
        {
            Log.HeldByAnother(_logger, claim.Key, HandlerName);
            return new ProcessingResult(message, ProcessingOutcome.InProgress) { PayloadFingerprint = claim.Fingerprint };
        }

        return Duplicate(message, claim, claimed.StoredFingerprint, claimed.StoredResult);
    }

    private ProcessingResult Duplicate(IncomingMessage message, ClaimRequest claim, ReadOnlyMemory<byte> storedFingerprint, ReadOnlyMemory<byte>? storedResult)
    {
        // Every duplicate is checked against the stored fingerprint; no cached answer skips this.
        var differs = !storedFingerprint.IsEmpty && !storedFingerprint.Span.SequenceEqual(claim.Fingerprint.Span);
        if (differs)
        {
            Log.PayloadMismatch(_logger, claim.Key, HandlerName, PayloadFingerprint.ToHex(storedFingerprint.Span), PayloadFingerprint.ToHex(claim.Fingerprint.Span), _options.PayloadMismatchPolicy);
            if (_options.PayloadMismatchPolicy != PayloadMismatchPolicy.TreatAsDuplicate)
            {
                return new ProcessingResult(message, ProcessingOutcome.PayloadMismatch)
                {
                    Exception = new PayloadMismatchException(claim.Key, storedFingerprint, claim.Fingerprint),
                    PayloadFingerprint = claim.Fingerprint,
                    StoredFingerprint = storedFingerprint,
                };
            }
        }
        else
        {
            Log.DuplicateSkipped(_logger, claim.Key, HandlerName, IdempotencyMetrics.DuplicateCause(message));
        }

        return new ProcessingResult(message, ProcessingOutcome.Duplicate)
        {
            PayloadFingerprint = claim.Fingerprint,
            StoredFingerprint = storedFingerprint,
            PayloadDiffers = differs,
            StoredResult = storedResult,
        };
    }

    private ProcessingResult HandlerFailed(IncomingMessage message, ClaimRequest claim, Exception exception)
    {
        Log.HandlerFailed(_logger, exception, HandlerName, claim.Key);
        return new ProcessingResult(message, ProcessingOutcome.Failed) { Exception = exception, PayloadFingerprint = claim.Fingerprint };
    }

    /// <summary>
    /// A handler threw: its failure, and an attempt spent, unless the store's transaction is demonstrably broken (its
    /// connection failed under it, or the store does not answer a ping): then it is an outage. The exception's type
    /// alone decides nothing: a handler's own timeout or refused HTTP call is the handler's failure.
    /// </summary>
    private async ValueTask<ProcessingResult> HandlerThrewAsync(IncomingMessage message, ClaimRequest claim, IIdempotencyTransaction transaction, Exception exception)
    {
        if (await IsTransactionBrokenAsync(transaction).ConfigureAwait(false))
        {
            return StoreWorkFailed(message, claim, new StoreConnectionBrokenException("The store's connection broke while the handler ran.", exception), handlerRan: false);
        }

        await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
        return HandlerFailed(message, claim, exception);
    }

    /// <summary>Whether the transaction's connection broke or the store stopped answering; rolls it back when it did.</summary>
    private async ValueTask<bool> IsTransactionBrokenAsync(IIdempotencyTransaction transaction)
    {
        var broken = transaction.IsBroken;
        if (!broken)
        {
            try
            {
                broken = !await _store.PingAsync(CancellationToken.None).ConfigureAwait(false);
            }
#pragma warning disable CA1031 // A ping that fails is the answer.
            catch (Exception)
#pragma warning restore CA1031
            {
                broken = true;
            }
        }

        if (broken)
        {
            await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
        }

        return broken;
    }

    /// <summary>An error of the store's own work: an outage or a misconfiguration, never the message's fault; only a commit the store refused for the handler's writes is a handler failure.</summary>
    private ProcessingResult StoreWorkFailed(IncomingMessage message, ClaimRequest claim, Exception exception, bool handlerRan)
    {
        var failure = ClassifyStoreFailure(exception);
        switch (failure.Kind)
        {
            case StoreFailureKind.WriteRejected when handlerRan:
                Log.WriteRejected(_logger, exception, HandlerName, claim.Key, failure.Description);
                return new ProcessingResult(message, ProcessingOutcome.Failed) { Exception = exception, PayloadFingerprint = claim.Fingerprint };
            case StoreFailureKind.Misconfiguration:
                Log.StoreMisconfigured(_logger, exception, _store.Name, claim.Key, HandlerName, failure.Description);
                return new ProcessingResult(message, ProcessingOutcome.StoreMisconfigured) { Exception = exception, StoreFailure = failure, PayloadFingerprint = claim.Fingerprint };
            default:
                Log.StoreUnavailable(_logger, exception, _store.Name, claim.Key);
                return new ProcessingResult(message, ProcessingOutcome.StoreUnavailable) { Exception = exception, StoreFailure = failure with { Kind = StoreFailureKind.Outage }, PayloadFingerprint = claim.Fingerprint };
        }
    }

    private ProcessingResult LeaseLost(IncomingMessage message, ClaimRequest claim)
    {
        Log.LeaseLost(_logger, claim.Key, HandlerName);
        return new ProcessingResult(message, ProcessingOutcome.LeaseLost) { PayloadFingerprint = claim.Fingerprint };
    }

    /// <summary>The store's classification of its own error; a classifier that throws makes it an outage.</summary>
    private StoreFailure ClassifyStoreFailure(Exception exception)
    {
        // The pipeline's own marker for a transaction found broken under a handler: an outage, whatever the handler's
        // exception inside it says.
        if (exception is StoreConnectionBrokenException broken)
        {
            return new StoreFailure(StoreFailureKind.Outage, broken.Message);
        }

        try
        {
            return _store.ClassifyFailure(exception);
        }
#pragma warning disable CA1031 // Classification must not turn one failure into another.
        catch (Exception)
#pragma warning restore CA1031
        {
            return StoreFailure.Outage(exception);
        }
    }

    private ProcessingResult? Prepare(IncomingMessage message)
    {
        var error = message.KeyError ?? IdempotencyKey.GetValidationError(message.Key, _options.MaxKeyBytes);
        if (error is null)
        {
            return null;
        }

        Log.InvalidKey(_logger, message.Destination, HandlerName, error);
        return new ProcessingResult(message, ProcessingOutcome.InvalidKey) { Exception = new InvalidIdempotencyKeyException(error) };
    }

    private ClaimRequest CreateClaim(IncomingMessage message) =>
        new(HandlerName, message.Key!, PayloadFingerprint.Compute(message.Body.Span), _time.GetUtcNow() + _options.Retention);

    private async ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken)
    {
        var started = _time.GetTimestamp();
        var transaction = await _store.BeginAsync(cancellationToken).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(_store.Name, "begin", _time.GetElapsedTime(started));
        return transaction;
    }

    private async ValueTask CommitAsync(IIdempotencyTransaction transaction, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken)
    {
        var started = _time.GetTimestamp();

        // Once the commit is sent its outcome must be learned, so shutdown does not cancel it half way.
        await transaction.CommitAsync(completions, outbox, CancellationToken.None).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(_store.Name, "commit", _time.GetElapsedTime(started));
        _ = cancellationToken;
    }

    private static async ValueTask RollbackQuietlyAsync(IIdempotencyTransaction transaction)
    {
        try
        {
            await transaction.RollbackAsync(CancellationToken.None).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // A failed rollback changes nothing: the transaction dies with its connection.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    private static bool IsCancellation(Exception exception, CancellationToken cancellationToken) =>
        exception is OperationCanceledException && cancellationToken.IsCancellationRequested;

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

    private sealed class BatchState(int count)
    {
        public ProcessingResult?[] Results { get; } = new ProcessingResult?[count];

        public ClaimRequest[] Claims { get; } = new ClaimRequest[count];

        public int?[] FollowerOf { get; } = new int?[count];
    }
}
