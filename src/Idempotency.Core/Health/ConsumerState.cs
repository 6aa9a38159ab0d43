namespace Idempotency.Health;

/// <summary>The state of a consumer loop.</summary>
public enum ConsumerState
{
    /// <summary>Consuming.</summary>
    Running = 0,

    /// <summary>Paused on purpose, e.g. while the store is unreachable.</summary>
    Paused = 1,

    /// <summary>Stopped: shut down or crashed.</summary>
    Stopped = 2,

    /// <summary>Not taking messages because the store or the consumer's queue is misconfigured (authentication, missing schema, a queue that does not exist): unhealthy until fixed.</summary>
    Misconfigured = 3,
}
