namespace Idempotency;

/// <summary>What happens to a message whose idempotency key is missing or invalid.</summary>
public enum MissingKeyPolicy
{
    /// <summary>Dead-letter the message at once with the reason in its headers.</summary>
    DeadLetter = 0,

    /// <summary>Fail the message: it takes the failure path (retried, then dead-lettered).</summary>
    Fail = 1,
}
