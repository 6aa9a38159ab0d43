using System.Collections.Concurrent;

namespace Idempotency.Health;

/// <summary>Where consumer loops report that they are alive; the consumer health check reads it.</summary>
public sealed class ConsumerHealthRegistry
{
    private readonly ConcurrentDictionary<string, ConsumerHeartbeat> _consumers = new(StringComparer.Ordinal);

    /// <summary>Registers a consumer loop (or returns the one registered under that name).</summary>
    /// <param name="name">A unique name, such as <c>kafka:orders</c>.</param>
    /// <param name="timeProvider">The clock heartbeats are read from.</param>
    /// <returns>The heartbeat the loop updates.</returns>
    public ConsumerHeartbeat Register(string name, TimeProvider timeProvider) =>
        _consumers.GetOrAdd(name, static (key, time) => new ConsumerHeartbeat(key, time), timeProvider);

    /// <summary>Gets every registered consumer.</summary>
    public IReadOnlyCollection<ConsumerHeartbeat> Consumers => (IReadOnlyCollection<ConsumerHeartbeat>)_consumers.Values;
}
