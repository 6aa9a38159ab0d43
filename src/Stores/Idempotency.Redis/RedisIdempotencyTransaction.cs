using System.Text.Json;
using Idempotency.Outbox;
using Idempotency.Storage;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// A Redis store transaction: the keys it claimed under its lease token, and, once a handler asks for it, the
/// MULTI/EXEC transaction its writes join (<see cref="RedisTransaction"/>, or <c>context.GetRedisTransaction()</c>).
/// </summary>
/// <remarks>
/// Queue writes on <see cref="RedisTransaction"/> without awaiting their tasks: they complete when the store commits
/// (EXEC) and are cancelled when it does not. Reads on it return nothing before the commit; read through
/// <see cref="Database"/> instead, knowing such reads are not part of the atomic step.
/// </remarks>
public sealed class RedisIdempotencyTransaction : IIdempotencyTransaction
{
    private readonly RedisIdempotencyStore _store;
    private readonly List<ClaimRequest> _claimed = [];
    private ITransaction? _transaction;
    private bool _finished;

    internal RedisIdempotencyTransaction(RedisIdempotencyStore store)
    {
        _store = store;
        LeaseToken = Guid.NewGuid().ToString("N");
    }

    /// <summary>Gets the token this transaction's leases hold; a commit succeeds only while the leases still hold it.</summary>
    public string LeaseToken { get; }

    /// <summary>Gets the database, for reads outside the atomic step.</summary>
    public IDatabase Database => _store.Database;

    /// <summary>Gets the MULTI/EXEC transaction the handler's writes join; it executes at commit, with the completion records, only if every lease is still this worker's.</summary>
    public ITransaction RedisTransaction => _transaction ??= _store.Database.CreateTransaction();

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

        var results = await _store.ClaimAsync(requests, LeaseToken).ConfigureAwait(false);
        for (var i = 0; i < results.Length; i++)
        {
            if (results[i].Status == ClaimStatus.Claimed)
            {
                _claimed.Add(requests[i]);
            }
        }

        return results;
    }

    /// <inheritdoc/>
    /// <exception cref="ClaimLostException">A lease was taken over (or, with handler writes, expired); nothing was applied.</exception>
    public async ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(completions);
        ArgumentNullException.ThrowIfNull(outbox);
        ObjectDisposedException.ThrowIf(_finished, this);

        if (_transaction is not null || outbox.Count > 0)
        {
            await CommitWithTransactionAsync(completions, outbox).ConfigureAwait(false);
        }
        else if (completions.Count > 0)
        {
            var refused = await _store.CompleteAsync(completions, LeaseToken).ConfigureAwait(false);
            if (refused > 0)
            {
                throw new ClaimLostException(completions[refused - 1].Claim.Key);
            }
        }

        _finished = true;
        await ReleaseLeftoversAsync(completions).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public async ValueTask RollbackAsync(CancellationToken cancellationToken = default)
    {
        if (_finished)
        {
            return;
        }

        _finished = true;
        _transaction = null;
        if (_claimed.Count > 0)
        {
            var leases = _claimed.Select(c => _store.GetKey(c.HandlerName, c.Key)).ToArray();
            _claimed.Clear();
            await _store.ReleaseAsync(leases, LeaseToken).ConfigureAwait(false);
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
            // The leases expire by themselves.
            Log.ReleaseFailed(_store.Logger, exception, _claimed.Count > 0 ? _claimed[0].HandlerName : "?");
        }
    }

    private async Task CommitWithTransactionAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox)
    {
        var transaction = RedisTransaction;
        var conditions = new ConditionResult[completions.Count];
        for (var i = 0; i < completions.Count; i++)
        {
            var claim = completions[i].Claim;
            var key = _store.GetKey(claim.HandlerName, claim.Key);
            conditions[i] = transaction.AddCondition(Condition.StringEqual(key, LeaseToken));
            _ = transaction.StringSetAsync(key, _store.EncodeRecord(completions[i]), _store.Options.Retention);
        }

        foreach (var message in outbox)
        {
            NameValueEntry[] entries = message.Headers is { Count: > 0 } headers
                ? [new("destination", message.Destination), new("key", message.Key), new("payload", message.Payload), new("headers", JsonSerializer.Serialize(headers))]
                : [new("destination", message.Destination), new("key", message.Key), new("payload", message.Payload)];
            _ = transaction.StreamAddAsync(_store.OutboxStreamKey, entries);
        }

        if (!await transaction.ExecuteAsync().ConfigureAwait(false))
        {
            // Nothing was applied: neither the handler's writes nor any record. Rollback releases the leases still ours.
            _transaction = null;
            var lost = Array.FindIndex(conditions, c => !c.WasSatisfied);
            throw new ClaimLostException(completions[lost < 0 ? 0 : lost].Claim.Key);
        }
    }

    private async Task ReleaseLeftoversAsync(IReadOnlyList<CompletionRecord> completions)
    {
        if (_claimed.Count == completions.Count)
        {
            _claimed.Clear();
            return;
        }

        var done = new HashSet<string>(completions.Select(c => c.Claim.Key), StringComparer.Ordinal);
        var leftovers = _claimed.Where(c => !done.Contains(c.Key)).Select(c => _store.GetKey(c.HandlerName, c.Key)).ToArray();
        _claimed.Clear();
        if (leftovers.Length > 0)
        {
            try
            {
                await _store.ReleaseAsync(leftovers, LeaseToken).ConfigureAwait(false);
            }
            catch (Exception exception) when (_store.IsUnavailable(exception))
            {
                Log.ReleaseFailed(_store.Logger, exception, completions.Count > 0 ? completions[0].Claim.HandlerName : "?");
            }
        }
    }
}
