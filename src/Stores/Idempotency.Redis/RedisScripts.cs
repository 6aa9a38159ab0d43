namespace Idempotency.Redis;

/// <summary>
/// The store's atomic steps. StackExchange.Redis sends each script once (EVAL) and then by its SHA-1 (EVALSHA),
/// reloading it if the server lost its script cache (a restart).
/// </summary>
internal static class RedisScripts
{
    /// <summary>
    /// KEYS: record, lease. ARGV: token, lease ms. Returns {1, fingerprint[, result]} for a completed key, {2} while another
    /// token holds the lease, {0} after taking (or renewing) the lease.
    /// </summary>
    public const string Claim = """
        local rec = redis.call('HMGET', KEYS[1], 'f', 'r')
        if rec[1] then
          if rec[2] then return {1, rec[1], rec[2]} end
          return {1, rec[1]}
        end
        local holder = redis.call('GET', KEYS[2])
        if holder and holder ~= ARGV[1] then return {2} end
        redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
        return {0}
        """;

    /// <summary>
    /// The batch form of <see cref="Claim"/>: KEYS record1, lease1, record2, lease2, ...; ARGV token, lease ms. Returns
    /// one reply per key, shaped as <see cref="Claim"/>'s. One script per batch: the server runs one EVALSHA, not one per key.
    /// </summary>
    public const string ClaimMany = """
        local out = {}
        for i = 1, #KEYS / 2 do
          local rec = redis.call('HMGET', KEYS[2 * i - 1], 'f', 'r')
          if rec[1] then
            if rec[2] then out[i] = {1, rec[1], rec[2]} else out[i] = {1, rec[1]} end
          else
            local holder = redis.call('GET', KEYS[2 * i])
            if holder and holder ~= ARGV[1] then
              out[i] = {2}
            else
              redis.call('SET', KEYS[2 * i], ARGV[1], 'PX', ARGV[2])
              out[i] = {0}
            end
          end
        end
        return out
        """;

    /// <summary>
    /// KEYS: lease1, record1, lease2, record2, ... ARGV: token, ttl ms, then per key fingerprint, has-result ('1'/'0'),
    /// result. Refuses everything (returns the 1-based index of the first refused key) when any key is leased by
    /// another token or already completed; otherwise writes every record with its TTL, drops our leases and returns 0.
    /// </summary>
    public const string Complete = """
        local n = #KEYS / 2
        for i = 1, n do
          local holder = redis.call('GET', KEYS[2 * i - 1])
          if holder ~= ARGV[1] then
            if holder or redis.call('EXISTS', KEYS[2 * i]) == 1 then return i end
          end
        end
        for i = 1, n do
          local b = 3 + (i - 1) * 3
          if ARGV[b + 1] == '1' then
            redis.call('HSET', KEYS[2 * i], 'f', ARGV[b], 'r', ARGV[b + 2])
          else
            redis.call('HSET', KEYS[2 * i], 'f', ARGV[b])
          end
          redis.call('PEXPIRE', KEYS[2 * i], ARGV[2])
          if redis.call('GET', KEYS[2 * i - 1]) == ARGV[1] then redis.call('DEL', KEYS[2 * i - 1]) end
        end
        return 0
        """;

    /// <summary>KEYS: leases. ARGV: token. Deletes each lease still held by the token (compare-and-delete); returns how many.</summary>
    public const string Release = """
        local n = 0
        for _, k in ipairs(KEYS) do
          if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k); n = n + 1 end
        end
        return n
        """;

    /// <summary>
    /// KEYS: leases. ARGV: token, lease ms. Returns the 1-based index of the first lease another token holds; else
    /// renews our leases (so they outlast the commit that follows) and returns 0.
    /// </summary>
    public const string Check = """
        for i, k in ipairs(KEYS) do
          local holder = redis.call('GET', k)
          if holder and holder ~= ARGV[1] then return i end
        end
        for _, k in ipairs(KEYS) do
          if redis.call('GET', k) == ARGV[1] then redis.call('PEXPIRE', k, ARGV[2]) end
        end
        return 0
        """;
}
