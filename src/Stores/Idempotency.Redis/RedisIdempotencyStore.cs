using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// The Redis store. A claim writes each key once (<c>SET key claim NX PX retention GET</c>, in a Lua script over the
/// batch: a completed key or another worker's claim in progress found there answers instead) and takes the
/// transaction's lease, one status key; the commit sets that status to committed, guarded by the lease still being
/// this worker's. Two ways to use it:
/// <list type="bullet">
/// <item><description>Redis-held state: the handler queues its writes on <c>context.GetRedisTransaction()</c>; they
/// commit in one MULTI/EXEC with the completion, only if this worker still owns the lease. Exactly-once
/// effects for state kept in Redis.</description></item>
/// <item><description>External effects: the handler calls an HTTP service or sends an e-mail and ignores the
/// transaction. A crash after the effect and before the completion lets the effect repeat once the lease
/// expires.</description></item>
/// </list>
/// </summary>
/// <remarks>
/// One Redis key per (handler, key), <c>{KeyPrefix}:{{handler}|{key}}</c>, holding the claim (the transaction's token
/// and the fingerprint) or a record with a stored result, TTL the retention; one status key per transaction,
/// <c>{KeyPrefix}:lease:{token}</c> (layout in docs/redis.md). Outgoing messages go to the stream <c>{KeyPrefix}:outbox</c>. StackExchange.Redis takes no
/// <see cref="CancellationToken"/>: cancellation is honoured between calls.
/// </remarks>
public sealed class RedisIdempotencyStore : IIdempotencyStore, IIdempotencyKeyAdmin
{
    private readonly ILogger _logger;
    private readonly string _leaseMilliseconds;
    private readonly string _ttlMilliseconds;
    private readonly string _statusMilliseconds;

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
        _statusMilliseconds = ToMilliseconds(CommittedStatusTtl);
        KeySpace = new RedisKeySpace(connection, options.KeyPrefix + ":lease:");
    }

    /// <inheritdoc/>
    public string Name => "redis";

    /// <inheritdoc/>
    /// <value><see cref="RedisIdempotencyStoreOptions.Retention"/>: the TTL of every key, whatever the handler's
    /// <c>IdempotencyOptions.Retention</c> says.</value>
    public TimeSpan? EnforcedRetention => Options.Retention;

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

    /// <summary>Gets the store's key space: standalone or cluster, hash slots, and where transactions' status keys live.</summary>
    internal RedisKeySpace KeySpace { get; }

    /// <summary>Gets the Redis key that holds a key's claim (or its record once a result is stored).</summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <returns>The Redis key, <c>{KeyPrefix}:{{handler}|{key}}</c>.</returns>
    public RedisKey GetKey(string handlerName, string key) => $"{Options.KeyPrefix}:{{{handlerName}|{key}}}";

    /// <inheritdoc/>
    /// <remarks>
    /// A disconnected multiplexer is asked why (a PING, answered at once from its last connection failure): a wrong
    /// password or a refused user is a misconfiguration, not an outage, and the error thrown says which.
    /// </remarks>
    public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Connection.IsConnected
            ? ValueTask.FromResult<IIdempotencyTransaction>(new RedisIdempotencyTransaction(this))
            : BeginDisconnectedAsync();
    }

    /// <summary>
    /// Not connected says nothing about why: the server may be down, or it may refuse our credentials on every
    /// reconnect. The PING's error carries the multiplexer's connection failures (authentication among them), so the
    /// error thrown wraps it and <see cref="ClassifyFailure"/> reports its origin instead of assuming an outage.
    /// </summary>
    private async ValueTask<IIdempotencyTransaction> BeginDisconnectedAsync()
    {
        try
        {
            await Database.PingAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Every failure is rethrown, wrapped with what it says.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            throw new IdempotencyStoreUnavailableException($"The Redis connection of the idempotency store is not connected: {exception.Message}", exception);
        }

        // Reconnected in between.
        return new RedisIdempotencyTransaction(this);
    }

    /// <inheritdoc/>
    public bool IsUnavailable(Exception exception) => RedisFailures.IsUnavailable(exception);

    /// <inheritdoc/>
    public StoreFailure ClassifyFailure(Exception exception) => RedisFailures.Classify(exception);

    /// <inheritdoc/>
    /// <remarks>
    /// Checks, without writing anything, that the connection's user may run every command the store runs on keys under its
    /// prefix (the outbox's <c>XADD</c> aside); a refusal is a <see cref="StoreFailureKind.Misconfiguration"/> naming it.
    /// </remarks>
    public async ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            return await RedisPermissionCheck.RunAsync(this, cancellationToken).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // Every failure is classified, none is thrown.
        catch (Exception exception) when (exception is not OperationCanceledException)
#pragma warning restore CA1031
        {
            return RedisFailures.Classify(exception);
        }
    }

    /// <inheritdoc/>
    public async ValueTask<bool> PingAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            await Database.PingAsync().ConfigureAwait(false);
            return true;
        }
        catch (Exception exception) when (RedisFailures.IsUnavailable(exception))
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
        var redisKey = GetKey(handlerName, key);
        var value = (byte[]?)await Database.StringGetAsync(redisKey).ConfigureAwait(false);
        if (RedisRecord.TryDecode(value, out var fingerprint, out var result))
        {
            return (fingerprint.ToArray(), result?.ToArray());
        }

        return RedisRecord.ClaimToken(value) is { } token
            && await Database.StringGetAsync(KeySpace.StatusPrefixFor(redisKey) + token).ConfigureAwait(false) == CommittedStatus
            && RedisRecord.TryDecodeCommittedClaim(value!, out fingerprint)
            ? (fingerprint.ToArray(), null)
            : null;
    }

    private const string ForgetScript = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

    /// <inheritdoc/>
    /// <remarks>
    /// Deletes the key's Redis key (<see cref="GetKey"/>) only if it holds a completed record, and only if it did not change
    /// in between (compare-and-delete in one script): a key under a live lease is left alone. The redis-cli equivalent, for a key
    /// you know is completed: <c>redis-cli DEL "{KeyPrefix}:{handler|key}"</c> (braces included). Prefer
    /// <see cref="IdempotencyStoreOperations.ForgetKeyAsync"/>, which logs and counts the action.
    /// </remarks>
    public async ValueTask<bool> ForgetKeyAsync(string handlerName, string key, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentException.ThrowIfNullOrEmpty(key);
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            var redisKey = GetKey(handlerName, key);
            var value = await Database.StringGetAsync(redisKey).ConfigureAwait(false);
            if (value.IsNull || await FindAsync(handlerName, key).ConfigureAwait(false) is null)
            {
                return false;
            }

            cancellationToken.ThrowIfCancellationRequested();
            // Compare-and-delete in one script (Redis 7 has no conditional DEL): a lease taken in between is kept.
            var deleted = await Database.ScriptEvaluateAsync(ForgetScript, [redisKey], [value]).ConfigureAwait(false);
            return (long)deleted == 1;
        }
        catch (Exception exception) when (RedisFailures.IsUnavailable(exception))
        {
            throw new IdempotencyStoreUnavailableException("The Redis idempotency store could not be reached to forget a key.", exception);
        }
    }

    /// <summary>Reads the token of the transaction processing a key, or <see langword="null"/> when none is (free, committed or abandoned).</summary>
    internal async Task<string?> FindLeaseTokenAsync(string handlerName, string key)
    {
        var redisKey = GetKey(handlerName, key);
        var value = (byte[]?)await Database.StringGetAsync(redisKey).ConfigureAwait(false);
        return RedisRecord.ClaimToken(value) is { } token
            && await Database.StringGetAsync(KeySpace.StatusPrefixFor(redisKey) + token).ConfigureAwait(false) == InProgressStatus
            ? token
            : null;
    }

    /// <summary>
    /// The layered store's lease, created at its first claim: on a cluster it claims one slot's keys per transaction
    /// (a batch there goes to the source of truth alone), so every key of it shares the slot of its status key.
    /// </summary>
    /// <exception cref="NotSupportedException">A batch, or a key of another slot, on a Redis Cluster.</exception>
    internal RedisLease LeaseFor(RedisLease? lease, string token, IReadOnlyList<ClaimRequest> requests)
    {
        var first = GetKey(requests[0].HandlerName, requests[0].Key);
        var prefix = KeySpace.StatusPrefixFor(first);
        if (KeySpace.IsCluster && (requests.Count > 1 || (lease is not null && lease.StatusPrefix != prefix)))
        {
            throw new NotSupportedException("On a Redis Cluster the layered store's Redis layer claims one key per transaction (a batch's keys live in several hash slots); batches there go to the source of truth alone.");
        }

        return lease ?? new RedisLease(token, prefix + token, prefix);
    }

    /// <summary>
    /// Gets a Redis key named <paramref name="name"/> that lives in the same hash slot as the key's claim, for
    /// Redis-held state a handler writes in the store's MULTI/EXEC on a Redis Cluster (one MULTI/EXEC reaches one
    /// slot). On a standalone server any key works; this one works on both.
    /// </summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <param name="name">A name of your own (no <c>{</c> or <c>}</c>), e.g. <c>"balance"</c>.</param>
    /// <returns><c>{KeyPrefix}:{name}:{{handler}|{key}}</c>: the same hash tag as the claim's key.</returns>
    /// <exception cref="ArgumentException"><paramref name="name"/> is empty or contains a brace.</exception>
    public RedisKey GetColocatedKey(string handlerName, string key, string name)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name.AsSpan().IndexOfAny('{', '}') >= 0)
        {
            throw new ArgumentException($"A colocated key's name cannot contain '{{' or '}}' (a hash tag is the first braced part of a key); was '{name}'.", nameof(name));
        }

        return $"{Options.KeyPrefix}:{name}:{{{handlerName}|{key}}}";
    }

    /// <summary>Claims keys for a transaction: one script for the batch, one round trip.</summary>
    /// <param name="requests">The keys to claim.</param>
    /// <param name="lease">The transaction's lease.</param>
    /// <param name="claimedBefore">Whether the transaction sent a claim before: then its status is only renewed, never recreated.</param>
    internal async Task<ClaimResult[]> ClaimAsync(IReadOnlyList<ClaimRequest> requests, RedisLease lease, bool claimedBefore)
    {
        var keys = new RedisKey[requests.Count + 1];
        var args = new RedisValue[requests.Count + 5];
        keys[0] = lease.Status;
        args[0] = lease.Token;
        args[1] = lease.StatusPrefix;
        args[2] = _leaseMilliseconds;
        args[3] = _ttlMilliseconds;
        args[4] = claimedBefore ? 1 : 0;
        for (var i = 0; i < requests.Count; i++)
        {
            keys[i + 1] = GetKey(requests[i].HandlerName, requests[i].Key);
            args[i + 5] = RedisRecord.EncodeClaim(lease.TokenBytes, requests[i].Fingerprint);
        }

        // The reply lists only the keys that were not free: (index, value) pairs.
        var replies = (RedisResult[])(await Database.ScriptEvaluateAsync(RedisScripts.Claim, keys, args).ConfigureAwait(false))!;
        var results = new ClaimResult[requests.Count];
        Array.Fill(results, ClaimResult.Claimed);
        for (var i = 0; i + 1 < replies.Length; i += 2)
        {
            results[(int)replies[i] - 1] = ToClaimResult((byte[])replies[i + 1]!, lease);
        }

        return results;
    }

    /// <summary>
    /// Commits a transaction without handler writes in Redis: its status becomes committed, records with results are
    /// written, and <paramref name="leftovers"/> (claimed, not completed) are released, in one script. Returns 0, or the
    /// 1-based index of a completion refused because the lease expired and the key is no longer ours (nothing written).
    /// </summary>
    internal async Task<int> CommitAsync(RedisLease lease, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<RedisKey> leftovers)
    {
        var keys = new RedisKey[1 + completions.Count + leftovers.Count];
        var args = new RedisValue[5 + completions.Count];
        keys[0] = lease.Status;
        args[0] = lease.Token;
        args[1] = lease.StatusPrefix;
        args[2] = _statusMilliseconds;
        args[3] = _ttlMilliseconds;
        args[4] = completions.Count;
        for (var i = 0; i < completions.Count; i++)
        {
            keys[1 + i] = GetKey(completions[i].Claim.HandlerName, completions[i].Claim.Key);
            args[5 + i] = RecordToWrite(completions[i]) is { } record ? record : RedisValue.EmptyString;
        }

        for (var i = 0; i < leftovers.Count; i++)
        {
            keys[1 + completions.Count + i] = leftovers[i];
        }

        // -1: committed already, by a commit whose reply was lost; the retry is as good as done.
        var reply = (int)await Database.ScriptEvaluateAsync(RedisScripts.Commit, keys, args).ConfigureAwait(false);
        return Math.Max(reply, 0);
    }

    /// <summary>
    /// The record a completion must write over its claim value, or <see langword="null"/> when the claim value plus the
    /// committed status say it all (no result to store).
    /// </summary>
    internal byte[]? RecordToWrite(CompletionRecord completion) =>
        Options.StoreResults && completion.Result is not null ? EncodeRecord(completion) : null;

    /// <summary>Encodes a completion's record value (the result only when <see cref="RedisIdempotencyStoreOptions.StoreResults"/>).</summary>
    internal byte[] EncodeRecord(CompletionRecord completion) =>
        RedisRecord.Encode(completion.Claim.Fingerprint, Options.StoreResults ? completion.Result : null);

    /// <summary>Writes records over keys that hold our claim or nothing, leaving the transaction's status alone.</summary>
    internal Task MarkCompletedAsync(RedisLease lease, IReadOnlyList<CompletionRecord> completions)
    {
        var keys = new RedisKey[completions.Count];
        var args = new RedisValue[2 + completions.Count];
        args[0] = lease.Token;
        args[1] = _ttlMilliseconds;
        for (var i = 0; i < completions.Count; i++)
        {
            keys[i] = GetKey(completions[i].Claim.HandlerName, completions[i].Claim.Key);
            args[2 + i] = EncodeRecord(completions[i]);
        }

        return Database.ScriptEvaluateAsync(RedisScripts.MarkCompleted, keys, args);
    }

    /// <summary>The Redis keys of <paramref name="claimed"/> that <paramref name="completions"/> leave out (compared as (handler, key)).</summary>
    internal List<RedisKey> Leftovers(IEnumerable<ClaimRequest> claimed, IReadOnlyList<CompletionRecord> completions)
    {
        // Compared as (handler, key) pairs: only the leftovers, usually none, are formatted as Redis keys.
        var done = new HashSet<(string Handler, string Key)>(completions.Select(c => (c.Claim.HandlerName, c.Claim.Key)));
        return claimed.Where(c => !done.Contains((c.HandlerName, c.Key))).Select(c => GetKey(c.HandlerName, c.Key)).ToList();
    }

    /// <summary>Queues, in a MULTI/EXEC, the deletion of the keys still holding our claim.</summary>
    internal static void QueueReleaseClaims(ITransaction transaction, RedisLease lease, IReadOnlyList<RedisKey> keys) =>
        _ = transaction.ScriptEvaluateAsync(RedisScripts.ReleaseClaims, [.. keys], [lease.Token]);

    /// <summary>Deletes the keys still holding our claim, and our status while in progress.</summary>
    /// <returns>How many keys were released.</returns>
    internal async Task<int> ReleaseAsync(RedisLease lease, IReadOnlyList<RedisKey> keys) =>
        (int)await Database.ScriptEvaluateAsync(RedisScripts.Release, [lease.Status, .. keys], [lease.Token]).ConfigureAwait(false);

    /// <summary>Checks our lease holds (renewing it), or, if it expired, that no one took the keys; returns the 1-based index of a lost key, or 0.</summary>
    internal async Task<int> CheckAsync(RedisLease lease, IReadOnlyList<RedisKey> keys)
    {
        var reply = (int)await Database.ScriptEvaluateAsync(RedisScripts.Check, [lease.Status, .. keys], [lease.Token, lease.StatusPrefix, _leaseMilliseconds]).ConfigureAwait(false);
        return reply < 0 ? throw new InvalidOperationException("The Redis idempotency transaction was already committed.") : reply;
    }

    /// <summary>
    /// With <see cref="RedisIdempotencyStoreOptions.WaitForReplicas"/>, waits (<c>WAIT</c>) until that many replicas of
    /// the primary holding <paramref name="key"/> acknowledged every write sent before, this commit's included.
    /// </summary>
    /// <exception cref="IdempotencyStoreUnavailableException">Fewer replicas acknowledged within the timeout: the commit
    /// is applied on the primary but may be lost by a failover, so the message must not be acknowledged yet (its
    /// redelivery is answered as a duplicate if the commit survives).</exception>
    internal async Task WaitForReplicasAsync(RedisKey key)
    {
        var wanted = Options.WaitForReplicas;
        if (wanted <= 0)
        {
            return;
        }

        var server = Connection.GetServer(key);
        var acknowledged = (long)await server.ExecuteAsync("WAIT", wanted, (long)Options.ReplicaWaitTimeout.TotalMilliseconds).ConfigureAwait(false);
        if (acknowledged < wanted)
        {
            throw new IdempotencyStoreUnavailableException($"The commit reached {acknowledged} of the {wanted} replicas {nameof(RedisIdempotencyStoreOptions.WaitForReplicas)} asks for within {Options.ReplicaWaitTimeout.TotalMilliseconds:0} ms ({server.EndPoint}); the message is not acknowledged until its redelivery finds the commit.");
        }
    }

    /// <summary>The status a committed transaction's key holds.</summary>
    internal static readonly RedisValue CommittedStatus = "D";

    /// <summary>The status a transaction's key holds while it is in progress.</summary>
    internal static readonly RedisValue InProgressStatus = "P";

    /// <summary>How long a committed status is kept: the retention plus a lease, so it outlives every key that refers to it.</summary>
    internal TimeSpan CommittedStatusTtl => Options.Retention + Options.LeaseDuration;

    private static ClaimResult ToClaimResult(byte[] found, RedisLease lease)
    {
        if (RedisRecord.TryDecode(found, out var fingerprint, out var result))
        {
            return new ClaimResult(ClaimStatus.AlreadyProcessed, fingerprint, result);
        }

        // Our own claim: this transaction claimed the key before, and the script renewed the lease. Anything else is a
        // claim in progress (or a lease token of an older version), which expires by itself.
        return RedisRecord.IsClaimOf(found, lease.TokenBytes) ? ClaimResult.Claimed : ClaimResult.HeldByAnother;
    }

    private static string ToMilliseconds(TimeSpan value) =>
        ((long)Math.Ceiling(value.TotalMilliseconds)).ToString(System.Globalization.CultureInfo.InvariantCulture);
}
