namespace Idempotency.Storage;

/// <summary>What is recorded for a key whose handler succeeded, committed with the handler's effects.</summary>
/// <param name="Claim">The claim being completed.</param>
/// <param name="Duration">How long the handler ran.</param>
/// <param name="Result">An optional result the handler stored for duplicates to read.</param>
public readonly record struct CompletionRecord(ClaimRequest Claim, TimeSpan Duration, ReadOnlyMemory<byte>? Result = null)
{
    /// <summary>Gets the consumer position of the completed message, for stores that implement <see cref="IConsumerPositionStore"/>.</summary>
    /// <value>The message's <see cref="IncomingMessage.Position"/>; <see langword="null"/> when the adapter sets none.</value>
    public ConsumerPosition? Position { get; init; }
}
