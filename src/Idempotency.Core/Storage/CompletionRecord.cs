namespace Idempotency.Storage;

/// <summary>What is recorded for a key whose handler succeeded, committed with the handler's effects.</summary>
/// <param name="Claim">The claim being completed.</param>
/// <param name="Duration">How long the handler ran.</param>
/// <param name="Result">An optional result the handler stored for duplicates to read.</param>
public readonly record struct CompletionRecord(ClaimRequest Claim, TimeSpan Duration, ReadOnlyMemory<byte>? Result = null);
