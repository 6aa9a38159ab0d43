namespace Idempotency;

/// <summary>What happens when a key that was already processed arrives with a different payload.</summary>
public enum PayloadMismatchPolicy
{
    /// <summary>Skip it as a duplicate and log a warning; the message is acknowledged.</summary>
    TreatAsDuplicate = 0,

    /// <summary>Fail the message: it takes the failure path (retried, then dead-lettered).</summary>
    Fail = 1,

    /// <summary>Dead-letter the message at once with both fingerprints in its headers.</summary>
    Quarantine = 2,
}
