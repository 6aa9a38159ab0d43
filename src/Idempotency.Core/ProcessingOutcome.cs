namespace Idempotency;

/// <summary>What processing one message came to; adapters map it to acknowledge, retry or dead-letter.</summary>
public enum ProcessingOutcome
{
    /// <summary>The handler ran and its effects committed with the key.</summary>
    Processed = 0,

    /// <summary>The key was already processed; nothing ran. Acknowledge it.</summary>
    Duplicate = 1,

    /// <summary>The key was processed before with a different payload, and the policy says fail or quarantine.</summary>
    PayloadMismatch = 2,

    /// <summary>The handler threw; nothing was recorded, so a redelivery runs it again.</summary>
    Failed = 3,

    /// <summary>Another worker holds the key's lease right now; do not acknowledge, try again later.</summary>
    InProgress = 4,

    /// <summary>The store could not be reached; nothing was recorded. Not the message's fault: pause and back off.</summary>
    StoreUnavailable = 5,

    /// <summary>The key is missing, empty or too long; nothing ran.</summary>
    InvalidKey = 6,

    /// <summary>
    /// The store answers but is set up wrong (authentication, missing schema, permissions); nothing ran or was recorded.
    /// Not the message's fault: stop taking messages until the configuration is fixed.
    /// </summary>
    StoreMisconfigured = 7,

    /// <summary>
    /// The handler ran, but its claim's lease expired and another worker took the key over before the commit, so
    /// nothing was recorded. Effects outside the transaction may have happened and may happen again. Not an attempt.
    /// </summary>
    LeaseLost = 8,
}
