using Idempotency.Storage;

namespace Idempotency;

/// <summary>The result of processing one message.</summary>
public sealed class ProcessingResult
{
    internal ProcessingResult(IncomingMessage message, ProcessingOutcome outcome)
    {
        Message = message;
        Outcome = outcome;
    }

    /// <summary>Gets the message this result is for.</summary>
    public IncomingMessage Message { get; }

    /// <summary>Gets the outcome.</summary>
    public ProcessingOutcome Outcome { get; }

    /// <summary>Gets the failure for <see cref="ProcessingOutcome.Failed"/>, <see cref="ProcessingOutcome.StoreUnavailable"/>,
    /// <see cref="ProcessingOutcome.InvalidKey"/> and <see cref="ProcessingOutcome.PayloadMismatch"/>.</summary>
    public Exception? Exception { get; init; }

    /// <summary>Gets the store's classification of its failure, for <see cref="ProcessingOutcome.StoreUnavailable"/> and <see cref="ProcessingOutcome.StoreMisconfigured"/>.</summary>
    public StoreFailure? StoreFailure { get; init; }

    /// <summary>Gets the fingerprint of this message's payload, when computed.</summary>
    public ReadOnlyMemory<byte> PayloadFingerprint { get; init; }

    /// <summary>Gets the fingerprint stored with the key, for duplicates and mismatches.</summary>
    public ReadOnlyMemory<byte> StoredFingerprint { get; init; }

    /// <summary>Gets a value indicating whether a duplicate's payload differed from the stored one (policy <see cref="PayloadMismatchPolicy.TreatAsDuplicate"/>).</summary>
    public bool PayloadDiffers { get; init; }

    /// <summary>Gets the result a handler stored with the key, returned for duplicates by stores that keep it.</summary>
    public ReadOnlyMemory<byte>? StoredResult { get; init; }

    /// <summary>Gets a value indicating whether the message's effects are committed or were committed before, so it may be acknowledged.</summary>
    public bool IsCommitted => Outcome is ProcessingOutcome.Processed or ProcessingOutcome.Duplicate;

    /// <inheritdoc/>
    public override string ToString() => $"{Outcome} {Message.Key}";
}
