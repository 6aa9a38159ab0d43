using System.Net.Sockets;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// The Redis store. A claim takes an in-progress lease (<c>SET key token NX PX lease GET</c>, in a Lua script over the
/// batch: a completed record or another worker's token found there answers instead); the commit replaces the lease by
/// the completion record with its TTL, guarded by the key still holding this worker's token. Two ways to use it:
/// <list type="bullet">
/// <item><description>Redis-held state: the handler queues its writes on <c>context.GetRedisTransaction()</c>; they
/// commit in one MULTI/EXEC with the completion record, only if this worker still owns the lease. Exactly-once
/// effects for state kept in Redis.</description></item>
/// <item><description>External effects: the handler calls an HTTP service or sends an e-mail and ignores the
/// transaction. A crash after the effect and before the completion lets the effect repeat once the lease
/// expires.</description></item>
/// </list>
/// </summary>
/// <remarks>
/// One Redis key per (handler, key), <c>{KeyPrefix}:{{handler}|{key}}</c>: while the key is processed it holds the
/// lease token (TTL: the lease); once completed, the record (fingerprint and optional result; TTL: the retention).
/// Outgoing messages go to the stream <c>{KeyPrefix}:outbox</c>. StackExchange.Redis takes no
/// <see cref="CancellationToken"/>: cancellation is honoured between calls.
/// </remarks>
public sealed class RedisIdempotencyStore : IIdempotencyStore
{
    private readonly ILogger _logger;
    private readonly string _leaseMilliseconds;
    private readonly string _ttlMilliseconds;
    private bool? _isCluster;

    /// <summary>Creates the store over a connection the caller owns and shares.</summary>
    /// <param name="connection">The StackExchange.Redis connection.</param>
    /// <param name="options">The options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    /// <exception cref="ArgumentException">An option is invalid; the message names it.</exception>
    /// <exception cref="NotSupportedException">A connected server is older than Redis 7.0.</exception>
    public RedisIdempotencyStore(IConnectionMultiplexer connection, RedisIdempotencyStoreOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ThrowIfServerTooOld(connection);
        Connection = connection;
        Options = options;
        Database = connection.GetDatabase(options.Database);
        OutboxStreamKey = options.KeyPrefix + ":outbox";
        _logger = logger ?? NullLogger.Instance;
        _leaseMilliseconds = ToMilliseconds(options.LeaseDuration);
        _ttlMilliseconds = ToMilliseconds(options.Retention);
    }

    /// <inheritdoc/>
    public string Name => "redis";

    /// <summary>The oldest server the claim script runs on: it uses <c>SET ... NX PX ... GET</c>, new in Redis 7.0.</summary>
    public static Version MinimumServerVersion { get; } = new(7, 0);

    /// <summary>
    /// On an older server every claim would fail with a syntax error, which is not an outage: messages would be retried
    /// and dead-lettered. Refuse at start-up instead. Servers not connected yet are checked when they are.
    /// </summary>
    private static void ThrowIfServerTooOld(IConnectionMultiplexer connection)
    {
        foreach (var endpoint in connection.GetEndPoints())
        {
            var server = connection.GetServer(endpoint);
            if (server.IsConnected && server.Version < MinimumServerVersion)
            {
                throw new NotSupportedException($"The Redis idempotency store needs Redis {MinimumServerVersion} or later; {endpoint} runs {server.Version}.");
            }
        }
    }

    /// <summary>Gets the options.</summary>
    public RedisIdempotencyStoreOptions Options { get; }

    /// <summary>Gets the connection.</summary>
    public IConnectionMultiplexer Connection { get; }

    /// <summary>Gets the database the store writes to.</summary>
    public IDatabase Database { get; }

    /// <summary>Gets the stream outgoing messages are appended to (fields <c>destination</c>, <c>key</c>, <c>payload</c>, <c>headers</c>).</summary>
    public RedisKey OutboxStreamKey { get; }

    internal ILogger Logger => _logger;

    /// <summary>Gets a value indicating whether the server is a Redis Cluster, where one script cannot span a batch's keys.</summary>
    internal bool IsCluster => _isCluster ??= Connection.GetEndPoints() is { Length: > 0 } endpoints && Connection.GetServer(endpoints[0]).ServerType == ServerType.Cluster;

    internal string LeaseMilliseconds => _leaseMilliseconds;

    internal string TtlMilliseconds => _ttlMilliseconds;

    /// <summary>Gets the Redis key that holds a key's lease token while it is processed, then its completion record.</summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <returns>The Redis key, <c>{KeyPrefix}:{{handler}|{key}}</c>.</returns>
    public RedisKey GetKey(string handlerName, string key) => $"{Options.KeyPrefix}:{{{handlerName}|{key}}}";

    /// <inheritdoc/>
    public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (!Connection.IsConnected)
        {
            throw new IdempotencyStoreUnavailableException("The Redis connection of the idempotency store is not connected.");
        }

        return ValueTask.FromResult<IIdempotencyTransaction>(new RedisIdempotencyTransaction(this));
    }

    /// <inheritdoc/>
    public bool IsUnavailable(Exception exception) => IsRedisUnavailable(exception);

    /// <inheritdoc/>
    public async ValueTask<bool> PingAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            await Database.PingAsync().ConfigureAwait(false);
            return true;
        }
        catch (Exception exception) when (IsRedisUnavailable(exception))
        {
            return false;
        }
    }

    /// <summary>Reads a key's completion record, for tests and tooling.</summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <returns>The stored fingerprint and result, or <see langword="null"/> when the key is not completed.</returns>
    public async Task<(byte[] Fingerprint, byte[]? Result)?> FindAsync(string handlerName, string key)
    {
        var value = (byte[]?)await Database.StringGetAsync(GetKey(handlerName, key)).ConfigureAwait(false);
        return RedisRecord.TryDecode(value, out var fingerprint, out var result) ? (fingerprint.ToArray(), result?.ToArray()) : null;
    }

    /// <summary>Reads the token of the lease on a key, or <see langword="null"/> when it is not leased (free or completed).</summary>
    internal async Task<string?> FindLeaseTokenAsync(string handlerName, string key)
    {
        var value = (byte[]?)await Database.StringGetAsync(GetKey(handlerName, key)).ConfigureAwait(false);
        return value is null || RedisRecord.TryDecode(value, out _, out _) ? null : System.Text.Encoding.UTF8.GetString(value);
    }

    /// <summary>Claims keys under a lease token: one script for the batch, one round trip.</summary>
    internal async Task<ClaimResult[]> ClaimAsync(IReadOnlyList<ClaimRequest> requests, string token)
    {
        var results = new ClaimResult[requests.Count];
        RedisValue[] args = [token, _leaseMilliseconds];
        if (requests.Count == 1 || !IsCluster)
        {
            // One script for the whole batch: Redis runs one EVALSHA, with one SET NX GET per key inside it.
            var keys = new RedisKey[requests.Count];
            for (var i = 0; i < keys.Length; i++)
            {
                keys[i] = GetKey(requests[i].HandlerName, requests[i].Key);
            }

            var replies = (RedisResult[])(await Database.ScriptEvaluateAsync(RedisScripts.Claim, keys, args).ConfigureAwait(false))!;
            for (var i = 0; i < results.Length; i++)
            {
                results[i] = ToClaimResult((byte[]?)replies[i], token);
            }

            return results;
        }

        // On a cluster the keys of a batch live in different slots: one script per key, pipelined in one round trip.
        var tasks = new Task<RedisResult>[requests.Count];
        for (var i = 0; i < requests.Count; i++)
        {
            tasks[i] = Database.ScriptEvaluateAsync(RedisScripts.Claim, [GetKey(requests[i].HandlerName, requests[i].Key)], args);
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
        for (var i = 0; i < tasks.Length; i++)
        {
            results[i] = ToClaimResult((byte[]?)((RedisResult[])tasks[i].Result!)[0], token);
        }

        return results;
    }

    /// <summary>Writes completion records with one atomic script; returns the 1-based index of a refused key, or 0.</summary>
    internal async Task<int> CompleteAsync(IReadOnlyList<CompletionRecord> completions, string token)
    {
        var keys = new RedisKey[completions.Count];
        var values = new RedisValue[2 + completions.Count];
        values[0] = token;
        values[1] = _ttlMilliseconds;
        for (var i = 0; i < completions.Count; i++)
        {
            keys[i] = GetKey(completions[i].Claim.HandlerName, completions[i].Claim.Key);
            values[2 + i] = EncodeRecord(completions[i]);
        }

        var reply = await Database.ScriptEvaluateAsync(RedisScripts.Complete, keys, values).ConfigureAwait(false);
        return (int)reply;
    }

    /// <summary>Encodes a completion's record value (the result only when <see cref="RedisIdempotencyStoreOptions.StoreResults"/>).</summary>
    internal byte[] EncodeRecord(CompletionRecord completion) =>
        RedisRecord.Encode(completion.Claim.Fingerprint, Options.StoreResults ? completion.Result : null);

    /// <summary>Deletes the keys still holding the token (our leases).</summary>
    internal Task ReleaseAsync(RedisKey[] keys, string token) =>
        Database.ScriptEvaluateAsync(RedisScripts.Release, keys, [token]);

    /// <summary>Checks no other token or record holds the keys and renews our leases; returns the 1-based index of a lost one, or 0.</summary>
    internal async Task<int> CheckAsync(RedisKey[] keys, string token)
    {
        var reply = await Database.ScriptEvaluateAsync(RedisScripts.Check, keys, [token, _leaseMilliseconds]).ConfigureAwait(false);
        return (int)reply;
    }

    internal static bool IsRedisUnavailable(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            switch (current)
            {
                case IdempotencyStoreUnavailableException:
                case RedisConnectionException:
                case RedisTimeoutException:
                case SocketException:
                case TimeoutException:
                    return true;
                case RedisServerException server when IsTransientServerError(server.Message):
                    return true;
            }
        }

        return false;
    }

    private static bool IsTransientServerError(string message) =>
        message.StartsWith("LOADING", StringComparison.Ordinal)
        || message.StartsWith("READONLY", StringComparison.Ordinal)
        || message.StartsWith("MASTERDOWN", StringComparison.Ordinal)
        || message.StartsWith("TRYAGAIN", StringComparison.Ordinal)
        || message.StartsWith("CLUSTERDOWN", StringComparison.Ordinal)
        || message.StartsWith("BUSY", StringComparison.Ordinal);

    private static ClaimResult ToClaimResult(byte[]? found, string token)
    {
        if (found is null)
        {
            return ClaimResult.Claimed;
        }

        if (RedisRecord.TryDecode(found, out var fingerprint, out var result))
        {
            return new ClaimResult(ClaimStatus.AlreadyProcessed, fingerprint, result);
        }

        // Our own token: this transaction claimed the key before, and the script renewed the lease.
        return found.AsSpan().SequenceEqual(System.Text.Encoding.ASCII.GetBytes(token)) ? ClaimResult.Claimed : ClaimResult.HeldByAnother;
    }

    private static string ToMilliseconds(TimeSpan value) =>
        ((long)Math.Ceiling(value.TotalMilliseconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
