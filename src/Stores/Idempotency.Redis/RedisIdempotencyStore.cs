using System.Net.Sockets;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// The Redis store. A claim takes an in-progress lease (<c>SET lease token PX</c>, in a Lua script that first looks
/// for a completed record); the commit writes the completion record with its TTL and drops the lease, guarded by
/// the lease still being this worker's. Two ways to use it:
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
/// Keys are <c>{KeyPrefix}:{{handler}|{key}}:done</c> (the record, a hash with the fingerprint <c>f</c> and the
/// result <c>r</c>) and <c>...:lease</c>; the braces are a Redis Cluster hash tag, so one key's record and lease share a
/// slot. Outgoing messages go to the stream <c>{KeyPrefix}:outbox</c>. StackExchange.Redis takes no
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
    public RedisIdempotencyStore(IConnectionMultiplexer connection, RedisIdempotencyStoreOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
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

    /// <summary>Gets the Redis key of a key's completion record.</summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <returns>The record's key.</returns>
    public RedisKey GetRecordKey(string handlerName, string key) => $"{Options.KeyPrefix}:{{{handlerName}|{key}}}:done";

    /// <summary>Gets the Redis key of a key's in-progress lease.</summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <returns>The lease's key.</returns>
    public RedisKey GetLeaseKey(string handlerName, string key) => $"{Options.KeyPrefix}:{{{handlerName}|{key}}}:lease";

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
        var values = await Database.HashGetAsync(GetRecordKey(handlerName, key), ["f", "r"]).ConfigureAwait(false);
        return values[0].IsNull ? null : ((byte[])values[0]!, values[1].IsNull ? null : (byte[])values[1]!);
    }

    /// <summary>Claims keys under a lease token, pipelined: one round trip for the whole list.</summary>
    internal async Task<ClaimResult[]> ClaimAsync(IReadOnlyList<ClaimRequest> requests, string token)
    {
        if (requests.Count > 1 && !IsCluster)
        {
            // One script for the whole batch: Redis runs one EVALSHA instead of one per key (about 4x the keys per second).
            var keys = new RedisKey[requests.Count * 2];
            for (var i = 0; i < requests.Count; i++)
            {
                keys[2 * i] = GetRecordKey(requests[i].HandlerName, requests[i].Key);
                keys[(2 * i) + 1] = GetLeaseKey(requests[i].HandlerName, requests[i].Key);
            }

            var replies = (RedisResult[])(await Database.ScriptEvaluateAsync(RedisScripts.ClaimMany, keys, [token, _leaseMilliseconds]).ConfigureAwait(false))!;
            var many = new ClaimResult[requests.Count];
            for (var i = 0; i < many.Length; i++)
            {
                many[i] = ToClaimResult(replies[i]);
            }

            return many;
        }

        // On a cluster the keys of a batch live in different slots: one script per key, pipelined in one round trip.
        var tasks = new Task<RedisResult>[requests.Count];
        for (var i = 0; i < requests.Count; i++)
        {
            var request = requests[i];
            tasks[i] = Database.ScriptEvaluateAsync(
                RedisScripts.Claim,
                [GetRecordKey(request.HandlerName, request.Key), GetLeaseKey(request.HandlerName, request.Key)],
                [token, _leaseMilliseconds]);
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
        var results = new ClaimResult[requests.Count];
        for (var i = 0; i < tasks.Length; i++)
        {
            results[i] = ToClaimResult(tasks[i].Result);
        }

        return results;
    }

    /// <summary>Writes completion records with one atomic script; returns the 1-based index of a refused key, or 0.</summary>
    internal async Task<int> CompleteAsync(IReadOnlyList<CompletionRecord> completions, string token)
    {
        var keys = new RedisKey[completions.Count * 2];
        var values = new RedisValue[2 + (completions.Count * 3)];
        values[0] = token;
        values[1] = _ttlMilliseconds;
        for (var i = 0; i < completions.Count; i++)
        {
            var claim = completions[i].Claim;
            keys[2 * i] = GetLeaseKey(claim.HandlerName, claim.Key);
            keys[(2 * i) + 1] = GetRecordKey(claim.HandlerName, claim.Key);
            var result = Options.StoreResults ? completions[i].Result : null;
            values[2 + (3 * i)] = claim.Fingerprint;
            values[3 + (3 * i)] = result is null ? "0" : "1";
            values[4 + (3 * i)] = result is { } r ? r : RedisValue.EmptyString;
        }

        var reply = await Database.ScriptEvaluateAsync(RedisScripts.Complete, keys, values).ConfigureAwait(false);
        return (int)reply;
    }

    /// <summary>Deletes the leases still held by the token.</summary>
    internal Task ReleaseAsync(RedisKey[] leases, string token) =>
        Database.ScriptEvaluateAsync(RedisScripts.Release, leases, [token]);

    /// <summary>Checks no other token holds the leases and renews ours; returns the 1-based index of a lost one, or 0.</summary>
    internal async Task<int> CheckAsync(RedisKey[] leases, string token)
    {
        var reply = await Database.ScriptEvaluateAsync(RedisScripts.Check, leases, [token, _leaseMilliseconds]).ConfigureAwait(false);
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

    private static ClaimResult ToClaimResult(RedisResult reply)
    {
        var parts = (RedisResult[])reply!;
        return (int)parts[0] switch
        {
            0 => ClaimResult.Claimed,
            2 => ClaimResult.HeldByAnother,
            _ => new ClaimResult(ClaimStatus.AlreadyProcessed, (byte[])parts[1]!, parts.Length > 2 && !parts[2].IsNull ? (ReadOnlyMemory<byte>?)(byte[])parts[2]! : null),
        };
    }

    private static string ToMilliseconds(TimeSpan value) =>
        ((long)Math.Ceiling(value.TotalMilliseconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
