namespace Idempotency.Redis;

/// <summary>
/// The store's atomic steps. StackExchange.Redis sends each script once (EVAL) and then by its SHA-1 (EVALSHA),
/// reloading it if the server lost its script cache (a restart).
/// </summary>
/// <remarks>
/// <para>
/// One Redis key per (handler, key). A claim writes it once, with the retention as its TTL, holding the claim value
/// (see <see cref="RedisRecord"/>: <c>'P'</c>, the transaction's token, the fingerprint). Whether that claim is in
/// progress, committed or abandoned is said by one status key per transaction, <c>{KeyPrefix}:lease:{token}</c>:
/// <c>P</c> with the lease as its TTL while the transaction runs, <c>D</c> with the retention once it committed,
/// gone when its lease expired. So a commit writes one key however many keys it completes, and a key is written
/// once in its life unless a stored result rewrites it as a record: one key write per key, as for a plain
/// <c>SET NX</c>, instead of a lease and then a record (two).
/// </para>
/// <para>
/// Another transaction's claim is taken over only when its status key is gone, so while our status is <c>P</c> no
/// other worker can have taken any of our keys: a commit checks the status, not every key. Only a commit whose lease
/// expired checks its keys one by one (one MGET per 1,000 keys).
/// </para>
/// <para>
/// Common arguments: the first key is the transaction's status key; <c>ARGV[1]</c> its token; <c>ARGV[2]</c> the
/// prefix status keys are named with (the status of token <c>t</c> is that prefix followed by <c>t</c>).
/// </para>
/// </remarks>
internal static class RedisScripts
{
    /// <summary>
    /// KEYS: status, then the keys of a batch. ARGV: token, status prefix, lease ms, retention ms, <c>1</c> when the
    /// transaction claimed keys before (else <c>0</c>), then one claim value per key. Per key
    /// <c>SET key value NX PX retention GET</c>; when a value was there: a record, or a claim whose status is <c>D</c>,
    /// answers as a record (<c>'D'</c>, fingerprint); a claim whose status is gone (lease expired) is taken over; our
    /// own claim or one still in progress is returned as found. Returns pairs (1-based index, value) for the keys not
    /// claimed afresh; an empty array when every key was new. When any key is ours it writes our status <c>P</c> with
    /// the lease, or for a later claim only renews it (<c>XX</c>): a status that expired meanwhile must stay gone, since
    /// an earlier key may have been taken over, and "P" promises that none was.
    /// </summary>
    public const string Claim = """
        local mine = 'P' .. ARGV[1]
        local ours = false
        local out = {}
        for i = 2, #KEYS do
          local v = redis.call('SET', KEYS[i], ARGV[i + 4], 'NX', 'PX', ARGV[4], 'GET')
          if not v then
            ours = true
          elseif string.sub(v, 1, 1) == 'P' then
            if string.sub(v, 1, 33) == mine then
              ours = true
              out[#out + 1] = i - 1; out[#out + 1] = v
            else
              local status = redis.call('GET', ARGV[2] .. string.sub(v, 2, 33))
              if status == 'D' then
                out[#out + 1] = i - 1; out[#out + 1] = 'D' .. string.sub(v, 34)
              elseif status then
                out[#out + 1] = i - 1; out[#out + 1] = v
              else
                redis.call('SET', KEYS[i], ARGV[i + 4], 'PX', ARGV[4])
                ours = true
              end
            end
          else
            out[#out + 1] = i - 1; out[#out + 1] = v
          end
        end
        if ours then
          if ARGV[5] == '1' then redis.call('SET', KEYS[1], 'P', 'PX', ARGV[3], 'XX')
          else redis.call('SET', KEYS[1], 'P', 'PX', ARGV[3]) end
        end
        return out
        """;

    /// <summary>
    /// KEYS: status, the n completed keys, then the keys claimed but not completed (released here, in the same atomic
    /// step, so they can never pass for committed). ARGV: token, status prefix, status ms, retention ms, n, then per
    /// completed key its record or an empty string (no result to store: the claim value stays). Returns 0 when
    /// committed; the 1-based index of a refused key (nothing written) when our lease expired and a key no longer holds
    /// our claim; -1 when already committed.
    /// </summary>
    public const string Commit = """
        local mine = 'P' .. ARGV[1]
        local n = tonumber(ARGV[5])
        local status = redis.call('GET', KEYS[1])
        if status == 'D' then return -1 end
        if not status then
          for s = 2, n + 1, 1000 do
            local found = redis.call('MGET', unpack(KEYS, s, math.min(s + 999, n + 1)))
            for j = 1, #found do
              if not found[j] or string.sub(found[j], 1, 33) ~= mine then return s + j - 2 end
            end
          end
        end
        redis.call('SET', KEYS[1], 'D', 'PX', ARGV[3])
        for i = 1, n do
          if ARGV[i + 5] ~= '' then redis.call('SET', KEYS[i + 1], ARGV[i + 5], 'PX', ARGV[4]) end
        end
        for i = n + 2, #KEYS do
          local v = redis.call('GET', KEYS[i])
          if v and string.sub(v, 1, 33) == mine then redis.call('DEL', KEYS[i]) end
        end
        return 0
        """;

    /// <summary>
    /// KEYS: status, then keys. ARGV: token. Deletes each key still holding our claim (compare-and-delete) and our
    /// status while it is in progress; returns how many keys. Does nothing once committed: a rollback after a commit
    /// whose reply was lost must not free keys that the commit made processed.
    /// </summary>
    public const string Release = """
        if redis.call('GET', KEYS[1]) == 'D' then return 0 end
        local mine = 'P' .. ARGV[1]
        local n = 0
        for i = 2, #KEYS do
          local v = redis.call('GET', KEYS[i])
          if v and string.sub(v, 1, 33) == mine then redis.call('DEL', KEYS[i]); n = n + 1 end
        end
        if redis.call('GET', KEYS[1]) == 'P' then redis.call('DEL', KEYS[1]) end
        return n
        """;

    /// <summary>
    /// KEYS: keys. ARGV: token. Deletes each key still holding our claim (compare-and-delete), whatever our status: the
    /// claimed keys a commit leaves out, queued in its MULTI/EXEC.
    /// </summary>
    public const string ReleaseClaims = """
        local mine = 'P' .. ARGV[1]
        for _, k in ipairs(KEYS) do
          local v = redis.call('GET', k)
          if v and string.sub(v, 1, 33) == mine then redis.call('DEL', k) end
        end
        return 0
        """;

    /// <summary>
    /// KEYS: status, then keys. ARGV: token, status prefix, lease ms. Renews our lease and returns 0 while it is in
    /// progress. When it expired: the 1-based index of the first key that holds something other than our claim (a
    /// missing key is accepted), else the lease is taken again and 0 returned. -1 when already committed.
    /// </summary>
    public const string Check = """
        local status = redis.call('GET', KEYS[1])
        if status == 'P' then redis.call('PEXPIRE', KEYS[1], ARGV[3]); return 0 end
        if status then return -1 end
        local mine = 'P' .. ARGV[1]
        for i = 2, #KEYS do
          local v = redis.call('GET', KEYS[i])
          if v and string.sub(v, 1, 33) ~= mine then return i - 1 end
        end
        redis.call('SET', KEYS[1], 'P', 'PX', ARGV[3])
        return 0
        """;

    /// <summary>
    /// KEYS: keys. ARGV: token, retention ms, then one record per key. Writes each record where the key holds our
    /// claim or nothing (a completion known from elsewhere, e.g. the source of truth of the layered store), leaving our
    /// status alone; returns how many were written.
    /// </summary>
    public const string MarkCompleted = """
        local mine = 'P' .. ARGV[1]
        local n = 0
        for i, k in ipairs(KEYS) do
          local v = redis.call('GET', k)
          if not v or string.sub(v, 1, 33) == mine then redis.call('SET', k, ARGV[i + 2], 'PX', ARGV[2]); n = n + 1 end
        end
        return n
        """;

    /// <summary>
    /// The start-up check's question, answered without touching a key: may this connection's user run each command the
    /// store sends, on keys named like the store's? ARGV: a claim key, a status key, <c>1</c> when commits wait for
    /// replicas. Returns the first refused command with its key, or an empty string. The keys are arguments, not KEYS,
    /// so a Redis Cluster does not route or check them (the script reads nothing).
    /// </summary>
    public const string PermissionProbe = """
        local checks = {
          {'SET', ARGV[1], 'v', 'NX', 'PX', '1000', 'GET'}, {'SET', ARGV[1], 'v', 'PX', '1000'}, {'GET', ARGV[1]},
          {'DEL', ARGV[1]}, {'PEXPIRE', ARGV[1], '1000'}, {'MGET', ARGV[1]}, {'WATCH', ARGV[1]},
          {'SET', ARGV[2], 'v', 'PX', '1000'}, {'SET', ARGV[2], 'v', 'XX', 'PX', '1000'}, {'GET', ARGV[2]},
          {'DEL', ARGV[2]}, {'PEXPIRE', ARGV[2], '1000'}, {'WATCH', ARGV[2]},
          {'MULTI'}, {'EXEC'}
        }
        if ARGV[3] == '1' then checks[#checks + 1] = {'WAIT', '1', '1000'} end
        for _, check in ipairs(checks) do
          if not redis.acl_check_cmd(unpack(check)) then
            return check[1] .. (check[2] and (' on ' .. check[2]) or '')
          end
        end
        return ''
        """;
}
