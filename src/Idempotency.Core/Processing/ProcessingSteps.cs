using Idempotency.Diagnostics;
using Idempotency.Outbox;
using Idempotency.Storage;

namespace Idempotency.Processing;

/// <summary>
/// The steps every way of processing shares: claims built from messages, store calls timed into the store metrics,
/// the duplicate rate, and telling a handler's failure from a broken store transaction under it.
/// </summary>
internal sealed class ProcessingSteps(IIdempotencyStore store, IdempotencyOptions options, ProcessingResults results, TimeProvider time)
{
    /// <summary>Gets the store.</summary>
    public IIdempotencyStore Store => store;

    /// <summary>Gets the store's key look-up, when it has one.</summary>
    public IProcessedKeyLookup? Lookup { get; } = store as IProcessedKeyLookup;

    /// <summary>Gets the share of recent single messages that were duplicates.</summary>
    public DuplicateRate DuplicateRate { get; } = new();

    /// <summary>Gets the results and their logging.</summary>
    public ProcessingResults Results => results;

    /// <summary>Gets the clock.</summary>
    public TimeProvider Time => time;

    /// <summary>Gets the handler name that scopes keys.</summary>
    public string HandlerName => options.HandlerName;

    /// <summary>Gets whether a copy of a committed key with another payload is acknowledged as a duplicate (it commits) or not.</summary>
    public bool MismatchCommits => options.PayloadMismatchPolicy == PayloadMismatchPolicy.TreatAsDuplicate;

    /// <summary>The claim of a message whose key is valid.</summary>
    public ClaimRequest CreateClaim(IncomingMessage message) =>
        new(HandlerName, message.Key!, PayloadFingerprint.Compute(message.Body.Span), time.GetUtcNow() + options.Retention);

    public async ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken)
    {
        var started = time.GetTimestamp();
        var transaction = await store.BeginAsync(cancellationToken).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(store.Name, "begin", time.GetElapsedTime(started));
        return transaction;
    }

    public async ValueTask CommitAsync(IIdempotencyTransaction transaction, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox)
    {
        var started = time.GetTimestamp();

        // Once the commit is sent its outcome must be learned, so shutdown does not cancel it half way.
        await transaction.CommitAsync(completions, outbox, CancellationToken.None).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(store.Name, "commit", time.GetElapsedTime(started));
    }

    /// <summary>Looks one key up and counts the answer in the duplicate rate.</summary>
    public async ValueTask<ClaimResult?> LookUpAsync(IProcessedKeyLookup lookup, ClaimRequest claim, CancellationToken cancellationToken)
    {
        var started = time.GetTimestamp();
        var found = await lookup.FindProcessedAsync(claim, cancellationToken).ConfigureAwait(false);
        IdempotencyMetrics.RecordStoreOperation(store.Name, "lookup", time.GetElapsedTime(started));
        DuplicateRate.Record(found is not null);
        return found;
    }

    /// <summary>
    /// A handler threw: its failure, and an attempt spent, unless the store's transaction is demonstrably broken (its
    /// connection failed under it, or the store does not answer a ping): then it is an outage. The exception's type
    /// alone decides nothing: a handler's own timeout or refused HTTP call is the handler's failure.
    /// </summary>
    public async ValueTask<ProcessingResult> HandlerThrewAsync(IncomingMessage message, ClaimRequest claim, IIdempotencyTransaction transaction, Exception exception)
    {
        if (await IsTransactionBrokenAsync(transaction).ConfigureAwait(false))
        {
            return results.StoreWorkFailed(message, claim, new StoreConnectionBrokenException("The store's connection broke while the handler ran.", exception), handlerRan: false);
        }

        await RollbackQuietlyAsync(transaction).ConfigureAwait(false);
        return results.HandlerFailed(message, claim, exception);
    }

    /// <summary>Whether the transaction's connection broke or the store stopped answering; rolls it back when it did.</summary>
    public async ValueTask<bool> IsTransactionBrokenAsync(IIdempotencyTransaction transaction)
    {
        var broken = transaction.IsBroken;
        if (!broken)
        {
            try
            {
                broken = !await store.PingAsync(CancellationToken.None).ConfigureAwait(false);
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

    public static async ValueTask RollbackQuietlyAsync(IIdempotencyTransaction transaction)
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

    /// <summary>Whether an exception is the caller's cancellation (anything else, a timeout included, is a failure to classify).</summary>
    public static bool IsCancellation(Exception exception, CancellationToken cancellationToken) =>
        exception is OperationCanceledException && cancellationToken.IsCancellationRequested;
}
