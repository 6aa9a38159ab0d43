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

    // Keys of a claim whose reply never came: the script may have run, so a rollback releases them too.
    private readonly List<ClaimRequest> _maybeClaimed = [];
    private RedisLease? _lease;
    private ITransaction? _transaction;
    private bool _finished;

    internal RedisIdempotencyTransaction(RedisIdempotencyStore store)
    {
        _store = store;
        LeaseToken = Guid.NewGuid().ToString("N");
    }

    /// <summary>Gets the token this transaction's claims hold; a commit succeeds only while its lease is still this token's.</summary>
    public string LeaseToken { get; }

    /// <summary>Gets the lease, once the transaction has claimed.</summary>
    internal RedisLease? Lease => _lease;

    /// <summary>Gets the database, for reads outside the atomic step.</summary>
    public IDatabase Database => _store.Database;

    /// <summary>Gets the MULTI/EXEC transaction the handler's writes join; it executes at commit, with the completion, only while this worker's lease holds.</summary>
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

        var claimedBefore = _lease is not null;
        _lease = _store.LeaseFor(_lease, LeaseToken, requests);
        ClaimResult[] results;
        try
        {
            results = await _store.ClaimAsync(requests, _lease, claimedBefore).ConfigureAwait(false);
        }
        catch
        {
            _maybeClaimed.AddRange(requests);
            throw;
        }

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
    /// <exception cref="ClaimLostException">The lease expired and a key was taken over (or, with handler writes, the lease expired); nothing was applied.</exception>
    public async ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(completions);
        ArgumentNullException.ThrowIfNull(outbox);
        ObjectDisposedException.ThrowIf(_finished, this);

        if (_lease is null || (_claimed.Count == 0 && completions.Count == 0))
        {
            // Nothing claimed: nothing of ours to commit in Redis, but handler writes and outbox entries still apply.
            if (_transaction is not null || outbox.Count > 0)
            {
                AddOutbox(RedisTransaction, outbox);
                await RedisTransaction.ExecuteAsync().ConfigureAwait(false);
            }
        }
        else if (_transaction is not null || outbox.Count > 0)
        {
            await CommitWithTransactionAsync(_lease, completions, outbox).ConfigureAwait(false);
        }
        else if (completions.Count > 0 || _claimed.Count > 0)
        {
            var refused = await _store.CommitAsync(_lease, completions, Leftovers(completions)).ConfigureAwait(false);
            if (refused > 0)
            {
                throw new ClaimLostException(completions[refused - 1].Claim.Key);
            }
        }

        _finished = true;
        _claimed.Clear();
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
        if (_lease is not null && (_claimed.Count > 0 || _maybeClaimed.Count > 0))
        {
            // After a commit whose reply was lost, the script leaves the committed keys alone.
            var keys = _claimed.Concat(_maybeClaimed).Select(c => _store.GetKey(c.HandlerName, c.Key)).ToArray();
            _claimed.Clear();
            _maybeClaimed.Clear();
            await _store.ReleaseAsync(_lease, keys).ConfigureAwait(false);
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
            // The lease expires by itself, and with it our claims.
            Log.ReleaseFailed(_store.Logger, exception, _claimed.Count > 0 ? _claimed[0].HandlerName : "?");
        }
    }

    /// <summary>
    /// One EXEC: the handler's writes, records with results, our status set to committed and the leftover claims
    /// deleted, on the one condition that our status still says in progress (no other worker can have taken a key).
    /// </summary>
    private async Task CommitWithTransactionAsync(RedisLease lease, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox)
    {
        var transaction = RedisTransaction;
        transaction.AddCondition(Condition.StringEqual(lease.Status, RedisIdempotencyStore.InProgressStatus));
        foreach (var completion in completions)
        {
            if (_store.RecordToWrite(completion) is { } record)
            {
                _ = transaction.StringSetAsync(_store.GetKey(completion.Claim.HandlerName, completion.Claim.Key), record, _store.Options.Retention);
            }
        }

        _ = transaction.StringSetAsync(lease.Status, RedisIdempotencyStore.CommittedStatus, _store.CommittedStatusTtl);
        var leftovers = Leftovers(completions);
        if (leftovers.Count > 0)
        {
            // Compare-and-delete: a key evicted and claimed afresh by another worker is not ours to delete.
            RedisIdempotencyStore.QueueReleaseClaims(transaction, lease, leftovers);
        }

        AddOutbox(transaction, outbox);
        if (!await transaction.ExecuteAsync().ConfigureAwait(false))
        {
            // Nothing was applied: neither the handler's writes nor the completion. Rollback releases what is still ours.
            _transaction = null;
            throw new ClaimLostException(completions.Count > 0 ? completions[0].Claim.Key : _claimed[0].Key);
        }
    }

    private void AddOutbox(ITransaction transaction, IReadOnlyList<OutboxMessage> outbox)
    {
        foreach (var message in outbox)
        {
            NameValueEntry[] entries = message.Headers is { Count: > 0 } headers
                ? [new("destination", message.Destination), new("key", message.Key), new("payload", message.Payload), new("headers", JsonSerializer.Serialize(headers))]
                : [new("destination", message.Destination), new("key", message.Key), new("payload", message.Payload)];
            _ = transaction.StreamAddAsync(_store.OutboxStreamKey, entries);
        }
    }

    /// <summary>The keys this transaction claimed that the commit does not complete: they must not pass for committed.</summary>
    private List<RedisKey> Leftovers(IReadOnlyList<CompletionRecord> completions) => _store.Leftovers(_claimed, completions);
}
