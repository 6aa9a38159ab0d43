namespace Idempotency.Delivery;

/// <summary>What an adapter does with a message after processing.</summary>
public enum DeliveryAction
{
    /// <summary>Acknowledge it (ack, commit the offset, delete it): its effects are committed.</summary>
    Acknowledge = 0,

    /// <summary>Do not acknowledge; process it again after <see cref="DeliveryDecision.Delay"/>. Counts as an attempt.</summary>
    Retry = 1,

    /// <summary>Send it to the dead-letter destination with <see cref="DeliveryDecision.Reason"/>, then acknowledge it.</summary>
    DeadLetter = 2,

    /// <summary>The store is unreachable or misconfigured: do not acknowledge, stop taking messages until the store's <see cref="StoreGate"/> opens, then try again. Not an attempt.</summary>
    PauseAndRetry = 3,

    /// <summary>Another worker holds the key (or took it over after this one's lease expired): do not acknowledge; try again after <see cref="DeliveryDecision.Delay"/>. Not an attempt.</summary>
    RetryLater = 4,
}
