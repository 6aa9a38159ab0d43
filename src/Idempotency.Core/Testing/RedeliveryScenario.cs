namespace Idempotency.Testing;

/// <summary>The redelivery situations <see cref="RedeliveryScenarioRunner"/> drives a handler through.</summary>
public enum RedeliveryScenario
{
    /// <summary>The broker delivers the same message twice, one after the other (a producer retry, a lost ack).</summary>
    DuplicateDelivery = 0,

    /// <summary>The consumer commits and crashes before the ack; a restarted consumer gets the message again, marked redelivered.</summary>
    CrashAfterCommitBeforeAck = 1,

    /// <summary>Two consumers get copies of the same message at the same time (a rebalance, a visibility timeout).</summary>
    ConcurrentCopies = 2,

    /// <summary>The handler writes its effects and then fails; the broker redelivers and the retry succeeds.</summary>
    FailureThenRetry = 3,

    /// <summary>A second message arrives with the same key but a different payload.</summary>
    SameKeyDifferentPayload = 4,
}
