namespace Idempotency.Delivery;

/// <summary>Maps processing outcomes to broker actions the same way for every adapter.</summary>
/// <remarks>
/// A message is acknowledged only when its effects committed (or were committed before), or when it is
/// deliberately dead-lettered. Only the handler spends attempts: a store outage or misconfiguration, a key held by
/// another worker and a lost lease never dead-letter anything.
/// </remarks>
public static class DeliveryPolicy
{
    /// <summary>Reason code for a handler that failed every attempt.</summary>
    public const string HandlerFailed = "handler_failed";

    /// <summary>Reason code for a missing or invalid key.</summary>
    public const string InvalidKey = "invalid_key";

    /// <summary>Reason code for a known key with a different payload.</summary>
    public const string PayloadMismatch = "payload_mismatch";

    /// <summary>Decides what to do with a processed message.</summary>
    /// <param name="result">The processing result.</param>
    /// <param name="attempt">The 1-based attempt that produced it (from the broker's delivery count or the adapter's own tally).</param>
    /// <param name="options">The handler's options (retry limits and policies).</param>
    /// <param name="storeOutageCount">How many store outages in a row the caller has seen, for the pause backoff (1 for the first).</param>
    /// <returns>The decision.</returns>
    public static DeliveryDecision Decide(ProcessingResult result, int attempt, IdempotencyOptions options, int storeOutageCount = 1)
    {
        ArgumentNullException.ThrowIfNull(result);
        ArgumentNullException.ThrowIfNull(options);
        return result.Outcome switch
        {
            ProcessingOutcome.Processed or ProcessingOutcome.Duplicate => new DeliveryDecision(DeliveryAction.Acknowledge),
            ProcessingOutcome.StoreUnavailable => new DeliveryDecision(DeliveryAction.PauseAndRetry, options.StoreUnavailableBackoff.GetDelay(storeOutageCount)),

            // A misconfiguration is probed slowly: it is fixed by a person, not by waiting.
            ProcessingOutcome.StoreMisconfigured => new DeliveryDecision(DeliveryAction.PauseAndRetry, options.StoreUnavailableBackoff.MaxDelay),
            ProcessingOutcome.InProgress or ProcessingOutcome.LeaseLost => new DeliveryDecision(DeliveryAction.RetryLater, options.Retry.GetDelay(1)),
            ProcessingOutcome.InvalidKey when options.MissingKeyPolicy == MissingKeyPolicy.DeadLetter =>
                new DeliveryDecision(DeliveryAction.DeadLetter, ReasonCode: InvalidKey, Reason: result.Exception?.Message),
            ProcessingOutcome.InvalidKey => Failure(attempt, options, InvalidKey, result.Exception?.Message),
            ProcessingOutcome.PayloadMismatch when options.PayloadMismatchPolicy == PayloadMismatchPolicy.Quarantine =>
                new DeliveryDecision(DeliveryAction.DeadLetter, ReasonCode: PayloadMismatch, Reason: result.Exception?.Message),
            ProcessingOutcome.PayloadMismatch => Failure(attempt, options, PayloadMismatch, result.Exception?.Message),

            // A body that does not deserialize fails the same way every time: poison at once, never retried.
            ProcessingOutcome.Failed when result.Exception is MessageDeserializationException bad =>
                new DeliveryDecision(DeliveryAction.DeadLetter, ReasonCode: MessageDeserializationException.ReasonCode, Reason: bad.Message),
            _ => Failure(attempt, options, HandlerFailed, Describe(result.Exception)),
        };
    }

    /// <summary>Formats an exception for a dead-letter header: its type and message, no stack trace.</summary>
    /// <param name="exception">The exception.</param>
    /// <returns>The description.</returns>
    public static string Describe(Exception? exception) =>
        exception is null ? "unknown" : $"{exception.GetType().FullName}: {exception.Message}";

    private static DeliveryDecision Failure(int attempt, IdempotencyOptions options, string code, string? reason) =>
        attempt >= options.Retry.MaxAttempts
            ? new DeliveryDecision(DeliveryAction.DeadLetter, ReasonCode: code, Reason: reason)
            : new DeliveryDecision(DeliveryAction.Retry, options.Retry.GetDelay(attempt), code, reason);
}
