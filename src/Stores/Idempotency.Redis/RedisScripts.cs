namespace Idempotency.Redis;

/// <summary>
/// The store's atomic steps. StackExchange.Redis sends each script once (EVAL) and then by its SHA-1 (EVALSHA),
/// reloading it if the server lost its script cache (a restart).
/// </summary>
/// <remarks>
/// One Redis key per (handler, key) holds either the lease token of the worker processing it (with the lease as its
/// TTL) or the completion record (see <see cref="RedisRecord"/>, with the retention as its TTL). Per key the server
/// does one write on the claim (<c>SET NX PX GET</c>, creating the lease) and one on the commit (<c>SET PX</c>, the record),
/// plus one MGET per 1,000 keys for the token check: two key writes per key, against one for a plain <c>SET NX</c>.
/// </remarks>
internal static class RedisScripts
{
    /// <summary>
    /// KEYS: the keys of a batch. ARGV: token, lease ms. Per key, <c>SET key token NX PX lease GET</c>: one reply per
    /// key, nil when the lease was taken, else the value found (a record, another token, or our own token, whose lease
    /// is then renewed). One script per batch: the server runs one EVALSHA, not one per key.
    /// </summary>
    public const string Claim = """
        local out = {}
        for i, k in ipairs(KEYS) do
          local v = redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
          if v == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end
          out[i] = v
        end
        return out
        """;

    /// <summary>
    /// KEYS: the keys of a batch. ARGV: token, ttl ms, then one encoded record per key. Refuses everything (returns the
    /// 1-based index of the first refused key, nothing written) when any key holds another token or a record; otherwise
    /// replaces every key (our lease, or nothing if it expired untaken) by its record with the TTL and returns 0.
    /// </summary>
    /// <remarks>The check reads the keys with one MGET per 1,000 keys (a Lua call costs a command dispatch; one GET per key cost
    /// about 1.5 µs of server CPU per key, the MGET about 0.5).</remarks>
    public const string Complete = """
        for s = 1, #KEYS, 1000 do
          local found = redis.call('MGET', unpack(KEYS, s, math.min(s + 999, #KEYS)))
          for j, v in ipairs(found) do
            if v and v ~= ARGV[1] then return s + j - 1 end
          end
        end
        for i, k in ipairs(KEYS) do
          redis.call('SET', k, ARGV[i + 2], 'PX', ARGV[2])
        end
        return 0
        """;

    /// <summary>KEYS: keys. ARGV: token. Deletes each key still holding the token (compare-and-delete); returns how many.</summary>
    public const string Release = """
        local n = 0
        for _, k in ipairs(KEYS) do
          if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k); n = n + 1 end
        end
        return n
        """;

    /// <summary>
    /// KEYS: keys. ARGV: token, lease ms. Returns the 1-based index of the first key holding another token or a
    /// record; else renews our leases (so they outlast the commit that follows) and returns 0.
    /// </summary>
    public const string Check = """
        for i, k in ipairs(KEYS) do
          local v = redis.call('GET', k)
          if v and v ~= ARGV[1] then return i end
        end
        for _, k in ipairs(KEYS) do
          if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end
        end
        return 0
        """;
}
