using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// Where the store's keys live: one key space on a standalone server (or a Sentinel primary), one per hash slot on a
/// Redis Cluster, where one script or MULTI/EXEC reaches one slot only. Names the status keys of transactions so that
/// a claim script finds another transaction's status from the token in a claim value.
/// </summary>
internal sealed class RedisKeySpace
{
    private readonly IConnectionMultiplexer _connection;
    private readonly string _statusPrefix;
    private int _serverType; // 0 not known yet, 1 standalone (or Sentinel primary), 2 cluster

    /// <summary>Initializes a new instance of the <see cref="RedisKeySpace"/> class.</summary>
    /// <param name="connection">The store's connection.</param>
    /// <param name="statusPrefix">The prefix of transactions' status keys (<c>{KeyPrefix}:lease:</c>).</param>
    public RedisKeySpace(IConnectionMultiplexer connection, string statusPrefix)
    {
        _connection = connection;
        _statusPrefix = statusPrefix;
    }

    /// <summary>Gets a value indicating whether the server is a Redis Cluster, where one script cannot span a batch's keys.</summary>
    /// <remarks>Known only once a server is connected (before the handshake a server reads as standalone); until then the answer is not kept.</remarks>
    public bool IsCluster
    {
        get
        {
            if (Volatile.Read(ref _serverType) is var known and not 0)
            {
                return known == 2;
            }

            // Any connected server answers: the first configured one may be down (a dead seed node of a cluster).
            var server = _connection.GetEndPoints().Select(e => _connection.GetServer(e)).FirstOrDefault(s => s.IsConnected);
            if (server is null)
            {
                return false;
            }

            var isCluster = server.ServerType == ServerType.Cluster;
            Volatile.Write(ref _serverType, isCluster ? 2 : 1);
            return isCluster;
        }
    }

    /// <summary>The key space a key's claim belongs to: its hash slot on a cluster, -1 on a standalone server.</summary>
    /// <param name="key">The claim's Redis key.</param>
    /// <returns>The slot, or -1.</returns>
    public int SlotOf(RedisKey key) => IsCluster ? _connection.HashSlot(key) : -1;

    /// <summary>
    /// A transaction's lease in one key space: the whole server when standalone (<paramref name="slot"/> -1), one hash
    /// slot on a cluster, where its status key carries a hash tag of that slot so that one script reaches it and the
    /// slot's keys.
    /// </summary>
    /// <param name="token">The transaction's lease token.</param>
    /// <param name="slot">The key space, from <see cref="SlotOf"/>.</param>
    /// <returns>The lease.</returns>
    public RedisLease NewLease(string token, int slot)
    {
        var prefix = slot < 0 ? _statusPrefix : ClusterStatusPrefix(slot);
        return new RedisLease(token, prefix + token, prefix);
    }

    /// <summary>The prefix of the status keys in the key space of a claim's key.</summary>
    /// <param name="key">The claim's Redis key.</param>
    /// <returns>The prefix; a transaction's status key is the prefix followed by its token.</returns>
    public string StatusPrefixFor(RedisKey key) => IsCluster ? ClusterStatusPrefix(_connection.HashSlot(key)) : _statusPrefix;

    /// <summary>
    /// Status keys of a cluster slot: <c>{KeyPrefix}:lease:{tag}:</c>, where <c>tag</c> is the shortest string that
    /// hashes to the slot. Every transaction names its status in a slot the same way.
    /// </summary>
    private string ClusterStatusPrefix(int slot) => $"{_statusPrefix}{{{ClusterSlots.Tag(slot)}}}:";
}
