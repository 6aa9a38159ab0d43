using Idempotency.Outbox;
using Idempotency.Storage;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// A transaction of the <see cref="LayeredIdempotencyStore"/>: Redis leases under one token, and the source of truth's
/// transaction the handler writes in (<see cref="SourceTransaction"/>; with PostgreSQL, <c>context.GetNpgsqlTransaction()</c>).
/// </summary>
public sealed class LayeredIdempotencyTransaction : ILayeredTransaction
{
    private readonly LayeredIdempotencyStore _store;
    private readonly List<ClaimRequest> _leased = [];
    private RedisLease? _lease;
    private IIdempotencyTransaction? _source;
    private bool _finished;

    internal LayeredIdempotencyTransaction(LayeredIdempotencyStore store)
    {
        _store = store;
        LeaseToken = Guid.NewGuid().ToString("N");
    }

    /// <summary>Gets the token this transaction's Redis leases hold.</summary>
    public string LeaseToken { get; }

    /// <summary>Gets a value indicating whether the source of truth's transaction was opened (some key got past the Redis filter).</summary>
    public bool HasSourceTransaction => _source is not null;

    /// <inheritdoc/>
    public IIdempotencyTransaction SourceTransaction =>
        _source ?? throw new InvalidOperationException($"No {_store.Source.Name} transaction is open: no key of this transaction got past the Redis filter.");

    private RedisIdempotencyStore Redis => _store.Redis;

    /// <inheritdoc/>
    public async ValueTask<ClaimResult> ClaimAsync(ClaimRequest request, CancellationToken cancellationToken = default)
    {
        var results = await ClaimBatchAsync([request], cancellationToken).ConfigureAwait(false);
        return results[0];
    }

    /// <inheritdoc/>
    public async ValueTask<IReadOnlyList<ClaimResult>> ClaimBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(requests);
        ObjectDisposedException.ThrowIf(_finished, this);
        cancellationToken.ThrowIfCancellationRequested();
        if (requests.Count == 0)
        {
            return [];
        }

        var results = new ClaimResult[requests.Count];
        ClaimResult[]? filtered = null;
        try
        {
            // A disconnected Redis is skipped at once rather than queueing the claim until it times out. On a cluster a
            // batch's keys span hash slots that one script cannot reach: the source of truth alone answers those.
            if (!Redis.KeySpace.IsCluster || (requests.Count == 1 && _lease is null))
            {
                var claimedBefore = _lease is not null;
                _lease = Redis.LeaseFor(_lease, LeaseToken, requests);
                filtered = Redis.Connection.IsConnected
                    ? await Redis.ClaimAsync(requests, _lease, claimedBefore).ConfigureAwait(false)
                    : throw new IdempotencyStoreUnavailableException("The Redis layer is not connected.");
            }
        }
        catch (Exception exception) when (RedisFailures.IsUnavailable(exception))
        {
            Log.RedisLayerUnavailable(Redis.Logger, exception, requests[0].HandlerName);
        }

        // Keys past the filter go to the source of truth in the caller's (sorted) order.
        var toSource = new List<int>(requests.Count);
        for (var i = 0; i < requests.Count; i++)
        {
            if (filtered is null || filtered[i].Status == ClaimStatus.Claimed)
            {
                toSource.Add(i);
                if (filtered is not null)
                {
                    _leased.Add(requests[i]);
                }
            }
            else
            {
                results[i] = filtered[i];
            }
        }

        if (toSource.Count == 0)
        {
            return results;
        }

        cancellationToken.ThrowIfCancellationRequested();
        _source ??= await _store.Source.BeginAsync(cancellationToken).ConfigureAwait(false);
        var sourceRequests = toSource.Select(i => requests[i]).ToArray();
        var sourceResults = await _source.ClaimBatchAsync(sourceRequests, cancellationToken).ConfigureAwait(false);
        List<CompletionRecord>? restore = null;
        for (var j = 0; j < sourceRequests.Length; j++)
        {
            results[toSource[j]] = sourceResults[j];
            if (sourceResults[j].Status == ClaimStatus.AlreadyProcessed && filtered is not null)
            {
                // Completed in the source of truth but the Redis marker is gone (expired, evicted, or its best-effort write failed).
                (restore ??= []).Add(new CompletionRecord(sourceRequests[j] with { Fingerprint = sourceResults[j].StoredFingerprint }, TimeSpan.Zero, sourceResults[j].StoredResult));
            }
        }

        if (restore is not null)
        {
            await RestoreMarkersAsync(restore).ConfigureAwait(false);
        }

        return results;
    }

    /// <inheritdoc/>
    /// <exception cref="ClaimLostException">Another worker holds a key's lease; nothing was committed.</exception>
    public async ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(completions);
        ArgumentNullException.ThrowIfNull(outbox);
        ObjectDisposedException.ThrowIf(_finished, this);

        var leased = completions.Where(c => IsLeased(c.Claim)).ToArray();
        if (leased.Length > 0)
        {
            var lost = 0;
            try
            {
                lost = await Redis.CheckAsync(_lease!, LeaseKeys(leased.Select(c => c.Claim))).ConfigureAwait(false);
            }
            catch (Exception exception) when (RedisFailures.IsUnavailable(exception))
            {
                // The check is an early refusal, not the guarantee: the source of truth's claim still is.
                Log.RedisLayerUnavailable(Redis.Logger, exception, leased[0].Claim.HandlerName);
            }

            if (lost > 0)
            {
                throw new ClaimLostException(leased[lost - 1].Claim.Key);
            }
        }

        if (_source is not null)
        {
            await _source.CommitAsync(completions, outbox, cancellationToken).ConfigureAwait(false);
        }

        _finished = true;
        if (_leased.Count > 0)
        {
            // Our status becomes committed and the leased keys left out of the commit are released, in one script: a
            // leftover must never pass for committed. If this fails, the claims are released (or expire) instead and
            // the source of truth answers the next duplicates, restoring the markers.
            try
            {
                await Redis.CommitAsync(_lease!, leased, Redis.Leftovers(_leased, leased)).ConfigureAwait(false);
                _leased.Clear();
            }
#pragma warning disable CA1031 // Best effort by design: the source of truth already holds it and filters the duplicates itself.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                Log.MarkCompletedFailed(Redis.Logger, exception, leased.Length, _leased[0].HandlerName);
            }
        }

        await ReleaseLeasesAsync().ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public async ValueTask RollbackAsync(CancellationToken cancellationToken = default)
    {
        if (_finished)
        {
            return;
        }

        _finished = true;
        try
        {
            if (_source is not null)
            {
                await _source.RollbackAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            await ReleaseLeasesAsync().ConfigureAwait(false);
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        try
        {
            await RollbackAsync(CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception exception) when (_store.IsUnavailable(exception))
        {
            // The source's transaction dies with its connection below.
        }
        finally
        {
            if (_source is not null)
            {
                await _source.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private bool IsLeased(ClaimRequest claim) =>
        _leased.Exists(c => string.Equals(c.Key, claim.Key, StringComparison.Ordinal) && string.Equals(c.HandlerName, claim.HandlerName, StringComparison.Ordinal));

    private RedisKey[] LeaseKeys(IEnumerable<ClaimRequest> claims) => claims.Select(c => Redis.GetKey(c.HandlerName, c.Key)).ToArray();

    private async Task RestoreMarkersAsync(List<CompletionRecord> restore)
    {
        try
        {
            await Redis.MarkCompletedAsync(_lease!, restore).ConfigureAwait(false);

            // Only now are they no longer our claims: had the write failed, they would stay leased and be released
            // (not committed with our status, which would answer their duplicates with this message's fingerprint).
            foreach (var record in restore)
            {
                _leased.RemoveAll(c => string.Equals(c.Key, record.Claim.Key, StringComparison.Ordinal) && string.Equals(c.HandlerName, record.Claim.HandlerName, StringComparison.Ordinal));
                Log.MarkerRestored(Redis.Logger, record.Claim.Key, record.Claim.HandlerName);
            }
        }
#pragma warning disable CA1031 // Best effort: the marker only saves later duplicates a round trip to the source of truth.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            Log.MarkCompletedFailed(Redis.Logger, exception, restore.Count, restore[0].Claim.HandlerName);
        }
    }

    private async Task ReleaseLeasesAsync()
    {
        if (_leased.Count == 0)
        {
            return;
        }

        var leases = LeaseKeys(_leased);
        var handler = _leased[0].HandlerName;
        _leased.Clear();
        try
        {
            await Redis.ReleaseAsync(_lease!, leases).ConfigureAwait(false);
        }
        catch (Exception exception) when (RedisFailures.IsUnavailable(exception))
        {
            Log.ReleaseFailed(Redis.Logger, exception, handler);
        }
    }
}
