namespace Idempotency.Delivery;

/// <summary>What a loop the user keeps does with one message, as decided by <see cref="IdempotentStep"/>.</summary>
/// <param name="Action">
/// What to do: <see cref="DeliveryAction.Acknowledge"/> (ack, delete, commit the offset); <see cref="DeliveryAction.Retry"/> or
/// <see cref="DeliveryAction.RetryLater"/> (do not acknowledge; have it delivered again after <paramref name="Delay"/>);
/// <see cref="DeliveryAction.DeadLetter"/> (send it to the dead-letter destination with <paramref name="DeadLetterHeaders"/>,
/// then acknowledge it); <see cref="DeliveryAction.PauseAndRetry"/> (do not acknowledge; take no more messages until
/// <paramref name="StoreReady"/> completes).
/// </param>
/// <param name="Delay">How long to keep the message back before it is delivered again (retries and pauses).</param>
/// <param name="ReasonCode">A short code for dead-letters and retries: <c>handler_failed</c>, <c>invalid_key</c>, <c>payload_mismatch</c>, <c>deserialization_failed</c>.</param>
/// <param name="Reason">A readable reason; never contains the payload.</param>
/// <param name="DeadLetterHeaders">The headers to put on the dead-lettered copy; <see langword="null"/> unless <paramref name="Action"/> is <see cref="DeliveryAction.DeadLetter"/>.</param>
/// <param name="Result">The processing result.</param>
/// <param name="Attempt">The 1-based handler attempt that produced the result.</param>
/// <param name="StoreReady">Completes when the store answers again; already complete unless <paramref name="Action"/> is <see cref="DeliveryAction.PauseAndRetry"/>.</param>
public readonly record struct StepResult(
    DeliveryAction Action,
    TimeSpan Delay,
    string? ReasonCode,
    string? Reason,
    IReadOnlyDictionary<string, string>? DeadLetterHeaders,
    ProcessingResult Result,
    int Attempt,
    Task StoreReady)
{
    /// <summary>Gets a value indicating whether the message is done with once the loop carried the action out (acknowledge or dead-letter).</summary>
    public bool Settles => Action is DeliveryAction.Acknowledge or DeliveryAction.DeadLetter;
}
