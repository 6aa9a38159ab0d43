using Idempotency.Diagnostics;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;

namespace Idempotency.Processing;

/// <summary>
/// Turns what happened to a message into its <see cref="ProcessingResult"/>, logging each: a rejected key, a duplicate
/// (compared with the stored payload by its own fingerprint), a handler failure, a store failure by its kind.
/// </summary>
internal sealed class ProcessingResults(IIdempotencyStore store, IdempotencyOptions options, ILogger logger)
{
    private string HandlerName => options.HandlerName;

    /// <summary>The <see cref="ProcessingOutcome.InvalidKey"/> result of a message whose key cannot be used, or <see langword="null"/> when it can.</summary>
    public ProcessingResult? RejectInvalidKey(IncomingMessage message)
    {
        var error = message.KeyError ?? IdempotencyKey.GetValidationError(message.Key, options.MaxKeyBytes);
        if (error is null)
        {
            return null;
        }

        Log.InvalidKey(logger, message.Destination, HandlerName, error);
        return new ProcessingResult(message, ProcessingOutcome.InvalidKey) { Exception = new InvalidIdempotencyKeyException(error) };
    }

    /// <summary>The result of a claim that found the key taken: in progress elsewhere, or a duplicate.</summary>
    public ProcessingResult NotClaimed(IncomingMessage message, ClaimRequest claim, ClaimResult claimed)
    {
        if (claimed.Status == ClaimStatus.HeldByAnother)
        {
            Log.HeldByAnother(logger, claim.Key, HandlerName);
            return new ProcessingResult(message, ProcessingOutcome.InProgress) { PayloadFingerprint = claim.Fingerprint };
        }

        return Duplicate(message, claim, claimed.StoredFingerprint, claimed.StoredResult);
    }

    /// <summary>The result of a copy of a committed key: a duplicate, or a payload mismatch by policy.</summary>
    public ProcessingResult Duplicate(IncomingMessage message, ClaimRequest claim, ReadOnlyMemory<byte> storedFingerprint, ReadOnlyMemory<byte>? storedResult)
    {
        // Every duplicate is checked against the stored fingerprint; no cached answer skips this.
        var differs = !storedFingerprint.IsEmpty && !storedFingerprint.Span.SequenceEqual(claim.Fingerprint.Span);
        if (differs)
        {
            Log.PayloadMismatch(logger, claim.Key, HandlerName, PayloadFingerprint.ToHex(storedFingerprint.Span), PayloadFingerprint.ToHex(claim.Fingerprint.Span), options.PayloadMismatchPolicy);
            if (options.PayloadMismatchPolicy != PayloadMismatchPolicy.TreatAsDuplicate)
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
            Log.DuplicateSkipped(logger, claim.Key, HandlerName, IdempotencyMetrics.DuplicateCause(message));
        }

        return new ProcessingResult(message, ProcessingOutcome.Duplicate)
        {
            PayloadFingerprint = claim.Fingerprint,
            StoredFingerprint = storedFingerprint,
            PayloadDiffers = differs,
            StoredResult = storedResult,
        };
    }

    /// <summary>The result of a handler that threw: its failure, an attempt spent.</summary>
    public ProcessingResult HandlerFailed(IncomingMessage message, ClaimRequest claim, Exception exception)
    {
        Log.HandlerFailed(logger, exception, HandlerName, claim.Key);
        return new ProcessingResult(message, ProcessingOutcome.Failed) { Exception = exception, PayloadFingerprint = claim.Fingerprint };
    }

    /// <summary>An error of the store's own work: an outage or a misconfiguration, never the message's fault; only a commit the store refused for the handler's writes is a handler failure.</summary>
    public ProcessingResult StoreWorkFailed(IncomingMessage message, ClaimRequest claim, Exception exception, bool handlerRan)
    {
        var failure = ClassifyStoreFailure(exception);
        switch (failure.Kind)
        {
            case StoreFailureKind.WriteRejected when handlerRan:
                Log.WriteRejected(logger, exception, HandlerName, claim.Key, failure.Description);
                return new ProcessingResult(message, ProcessingOutcome.Failed) { Exception = exception, PayloadFingerprint = claim.Fingerprint };
            case StoreFailureKind.Misconfiguration:
                Log.StoreMisconfigured(logger, exception, store.Name, claim.Key, HandlerName, failure.Description);
                return new ProcessingResult(message, ProcessingOutcome.StoreMisconfigured) { Exception = exception, StoreFailure = failure, PayloadFingerprint = claim.Fingerprint };
            default:
                Log.StoreUnavailable(logger, exception, store.Name, claim.Key);
                return new ProcessingResult(message, ProcessingOutcome.StoreUnavailable) { Exception = exception, StoreFailure = failure with { Kind = StoreFailureKind.Outage }, PayloadFingerprint = claim.Fingerprint };
        }
    }

    /// <summary>The result of a completion the store refused because another worker took the key's lease over.</summary>
    public ProcessingResult LeaseLost(IncomingMessage message, ClaimRequest claim)
    {
        Log.LeaseLost(logger, claim.Key, HandlerName);
        return new ProcessingResult(message, ProcessingOutcome.LeaseLost) { PayloadFingerprint = claim.Fingerprint };
    }

    /// <summary>The store's classification of its own error; a classifier that throws makes it an outage.</summary>
    public StoreFailure ClassifyStoreFailure(Exception exception)
    {
        // The pipeline's own marker for a transaction found broken under a handler: an outage, whatever the handler's
        // exception inside it says.
        if (exception is StoreConnectionBrokenException broken)
        {
            return new StoreFailure(StoreFailureKind.Outage, broken.Message);
        }

        try
        {
            return store.ClassifyFailure(exception);
        }
#pragma warning disable CA1031 // Classification must not turn one failure into another.
        catch (Exception)
#pragma warning restore CA1031
        {
            return StoreFailure.Outage(exception);
        }
    }
}
