namespace Idempotency.Redis.Tests;

/// <summary>The test classes that use the Redis Cluster run one after the other: one of them kills a primary mid-run.</summary>
[CollectionDefinition(Name)]
public sealed class RedisClusterCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "redis-cluster";
}
