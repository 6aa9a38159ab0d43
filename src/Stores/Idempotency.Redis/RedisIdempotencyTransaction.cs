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
/// On a Redis Cluster a transaction is one group per hash slot its keys fall in (a script or a MULTI/EXEC reaches one
/// slot): each group has its own status key (named with a hash tag of the slot), its own claim and commit script or
/// MULTI/EXEC, and its own <see cref="GetRedisTransaction(string, string)"/>. A commit is atomic per group, not across
/// groups. On a standalone server there is one group.
/// Queue writes on <see cref="RedisTransaction"/> without awaiting their tasks: they complete when the store commits
/// (EXEC) and are cancelled when it does not. The store checks them after EXEC: Redis applies the other commands and
/// the completion even when one of them fails (WRONGTYPE, say), so such a failure makes the commit throw
/// <see cref="RedisCommandFailedException"/> (the key stays recorded; the processor reports the message
/// <c>Failed</c> and logs the error). Reads on it return nothing before the commit; read through
/// <see cref="Database"/> instead, knowing such reads are not part of the atomic step.
/// </remarks>
public sealed class RedisIdempotencyTransaction : IIdempotencyTransaction
{
    private readonly RedisIdempotencyStore _store;

    // One group per hash slot on a cluster, one group (slot -1) on a standalone server.
    private readonly Dictionary<int, SlotGroup> _groups = [];
    private bool _finished;

    internal RedisIdempotencyTransaction(RedisIdempotencyStore store)
    {
        _store = store;
        LeaseToken = Guid.NewGuid().ToString("N");
    }

    /// <summary>Gets the store.</summary>
    internal RedisIdempotencyStore Store => _store;

    /// <summary>Gets the token this transaction's claims hold; a commit succeeds only while its lease is still this token's.</summary>
    public string LeaseToken { get; }

    /// <summary>Gets the lease of a transaction with one group (a standalone server, or one slot), once it has claimed.</summary>
    internal RedisLease? Lease => _groups.Values.FirstOrDefault(g => g.ClaimSent)?.Lease;

    /// <summary>Gets the database, for reads outside the atomic step.</summary>
    public IDatabase Database => _store.Database;

    /// <summary>
    /// Gets the MULTI/EXEC transaction the handler's writes join; it executes at commit, with the completion, only while
    /// this worker's lease holds. On a Redis Cluster use <see cref="GetRedisTransaction(string, string)"/> (a batch's
    /// keys are in several slots, each with its own MULTI/EXEC).
    /// </summary>
    /// <exception cref="InvalidOperationException">On a cluster, the transaction spans more than one hash slot.</exception>
    public ITransaction RedisTransaction
    {
        get
        {
            if (!_store.KeySpace.IsCluster)
            {
                return Group(-1).RedisTransaction(_store);
            }

            return _groups.Count == 1
                ? _groups.Values.First().RedisTransaction(_store)
                : throw new InvalidOperationException("On a Redis Cluster this transaction spans several hash slots, each with its own MULTI/EXEC: use GetRedisTransaction(handlerName, key), or context.GetRedisTransaction() per message.");
        }
    }

    /// <summary>
    /// Gets the MULTI/EXEC transaction for writes that belong to one key: the one of the key's hash slot on a Redis
    /// Cluster (write only keys of that slot in it, e.g. <see cref="RedisIdempotencyStore.GetColocatedKey"/>), the
    /// transaction's only one on a standalone server.
    /// </summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The idempotency key.</param>
    /// <returns>The transaction, executed at commit with that slot's completions.</returns>
    public ITransaction GetRedisTransaction(string handlerName, string key) =>
        Group(_store.KeySpace.SlotOf(_store.GetKey(handlerName, key))).RedisTransaction(_store);

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

        if (!_store.KeySpace.IsCluster)
        {
            return await ClaimGroupAsync(Group(-1), requests).ConfigureAwait(false);
        }

        // One script per hash slot, sent together (each to the primary of its slot).
        var parts = new Dictionary<int, (List<int> Indexes, List<ClaimRequest> Requests)>();
        for (var i = 0; i < requests.Count; i++)
        {
            var slot = _store.KeySpace.SlotOf(_store.GetKey(requests[i].HandlerName, requests[i].Key));
            if (!parts.TryGetValue(slot, out var part))
            {
                parts[slot] = part = ([], []);
            }

            part.Indexes.Add(i);
            part.Requests.Add(requests[i]);
        }

        var slots = parts.Keys.ToArray();
        var tasks = new Task<ClaimResult[]>[slots.Length];
        for (var g = 0; g < slots.Length; g++)
        {
            tasks[g] = ClaimGroupAsync(Group(slots[g]), parts[slots[g]].Requests);
        }

        await Task.WhenAll(tasks).ConfigureAwait(false);
        var results = new ClaimResult[requests.Count];
        for (var g = 0; g < slots.Length; g++)
        {
            var indexes = parts[slots[g]].Indexes;
            var groupResults = tasks[g].Result;
            for (var j = 0; j < indexes.Count; j++)
            {
                results[indexes[j]] = groupResults[j];
            }
        }

        return results;
    }

    /// <inheritdoc/>
    /// <exception cref="ClaimLostException">The lease expired and a key was taken over (or, with handler writes, the lease expired); nothing of that slot group was applied (other groups of a cluster batch may have been).</exception>
    /// <exception cref="NotSupportedException">Outgoing messages on a Redis Cluster (the outbox stream is one key, in one slot).</exception>
    public async ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(completions);
        ArgumentNullException.ThrowIfNull(outbox);
        ObjectDisposedException.ThrowIf(_finished, this);

        if (!_store.KeySpace.IsCluster)
        {
            var group = outbox.Count > 0 ? Group(-1) : _groups.GetValueOrDefault(-1);
            if (group is not null)
            {
                await CommitGroupAsync(group, completions, outbox).ConfigureAwait(false);
            }
        }
        else
        {
            if (outbox.Count > 0)
            {
                throw new NotSupportedException("The Redis store's outbox is one stream, in one hash slot, which a Redis Cluster cannot commit with the keys of other slots: on a cluster use the PostgreSQL or layered store for outgoing messages.");
            }

            await CommitClusterAsync(completions).ConfigureAwait(false);
        }

        _finished = true;
    }

    /// <inheritdoc/>
    public async ValueTask RollbackAsync(CancellationToken cancellationToken = default)
    {
        if (_finished)
        {
            return;
        }

        _finished = true;
        var releases = new List<Task>();
        foreach (var group in _groups.Values)
        {
            group.Transaction = null;
            if (!group.Committed && group.ClaimSent && (group.Claimed.Count > 0 || group.MaybeClaimed.Count > 0))
            {
                // After a commit whose reply was lost, the script leaves the committed keys alone.
                var keys = group.Claimed.Concat(group.MaybeClaimed).Select(c => _store.GetKey(c.HandlerName, c.Key)).ToArray();
                group.Claimed.Clear();
                group.MaybeClaimed.Clear();
                releases.Add(_store.ReleaseAsync(group.Lease, keys));
            }
        }

        await Task.WhenAll(releases).ConfigureAwait(false);
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
            Log.ReleaseFailed(_store.Logger, exception, _groups.Values.SelectMany(g => g.Claimed).Select(c => c.HandlerName).FirstOrDefault() ?? "?");
        }
    }

    private SlotGroup Group(int slot)
    {
        if (!_groups.TryGetValue(slot, out var group))
        {
            _groups[slot] = group = new SlotGroup(_store.KeySpace.NewLease(LeaseToken, slot));
        }

        return group;
    }

    private async Task<ClaimResult[]> ClaimGroupAsync(SlotGroup group, IReadOnlyList<ClaimRequest> requests)
    {
        var claimedBefore = group.ClaimSent;
        group.ClaimSent = true;
        ClaimResult[] results;
        try
        {
            results = await _store.ClaimAsync(requests, group.Lease, claimedBefore).ConfigureAwait(false);
        }
        catch
        {
            group.MaybeClaimed.AddRange(requests);
            throw;
        }

        for (var i = 0; i < results.Length; i++)
        {
            if (results[i].Status == ClaimStatus.Claimed)
            {
                group.Claimed.Add(requests[i]);
            }
        }

        return results;
    }

    /// <summary>
    /// Commits each slot group with its own script or MULTI/EXEC, all sent together. A group refused (its lease lost)
    /// writes nothing; the others commit: their keys are processed, and their messages' redeliveries are duplicates.
    /// </summary>
    private async Task CommitClusterAsync(IReadOnlyList<CompletionRecord> completions)
    {
        var bySlot = new Dictionary<int, List<CompletionRecord>>();
        foreach (var completion in completions)
        {
            var slot = _store.KeySpace.SlotOf(_store.GetKey(completion.Claim.HandlerName, completion.Claim.Key));
            if (!bySlot.TryGetValue(slot, out var list))
            {
                bySlot[slot] = list = [];
            }

            list.Add(completion);
        }

        var groups = _groups.ToArray();
        var tasks = new Task[groups.Length];
        for (var g = 0; g < groups.Length; g++)
        {
            tasks[g] = CommitGroupAsync(groups[g].Value, bySlot.GetValueOrDefault(groups[g].Key) ?? (IReadOnlyList<CompletionRecord>)[], []);
        }

        try
        {
            await Task.WhenAll(tasks).ConfigureAwait(false);
        }
        catch
        {
            // An outage beats a lost claim: the batch is retried as a whole either way.
            var failures = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
            var outage = failures.FirstOrDefault(e => e is not ClaimLostException);
            if (outage is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(outage);
            }

            throw failures[0];
        }
    }

    /// <summary>Commits one group: its MULTI/EXEC when the handler wrote in it (or outgoing messages), else the commit script.</summary>
    /// <exception cref="RedisCommandFailedException">A command the handler queued failed inside an EXEC that ran: the
    /// group is committed (its keys are recorded) all the same, since Redis does not roll back.</exception>
    private async Task CommitGroupAsync(SlotGroup group, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox)
    {
        IReadOnlyList<Exception> failed = [];
        if (!group.ClaimSent || (group.Claimed.Count == 0 && completions.Count == 0))
        {
            // Nothing claimed: nothing of ours to commit in Redis, but handler writes and outbox entries still apply.
            if (group.Transaction is not null || outbox.Count > 0)
            {
                var transaction = group.RealTransaction(_store);
                AddOutbox(transaction, outbox);
                await transaction.ExecuteAsync().ConfigureAwait(false);
                failed = await RecordingTransaction.FailedCommandsAsync(group.HandlerView).ConfigureAwait(false);
            }
        }
        else if (group.Transaction is not null || outbox.Count > 0)
        {
            await CommitWithTransactionAsync(group, completions, outbox).ConfigureAwait(false);
            failed = await RecordingTransaction.FailedCommandsAsync(group.HandlerView).ConfigureAwait(false);
        }
        else
        {
            var refused = await _store.CommitAsync(group.Lease, completions, _store.Leftovers(group.Claimed, completions)).ConfigureAwait(false);
            if (refused > 0)
            {
                throw new ClaimLostException(completions[refused - 1].Claim.Key);
            }
        }

        group.Committed = true;
        group.Claimed.Clear();
        if (group.ClaimSent)
        {
            await _store.WaitForReplicasAsync(group.Lease.Status).ConfigureAwait(false);
        }

        if (failed.Count > 0)
        {
            // Committed, so not retried: the error is the only trace of a write Redis refused, and it must not pass for Processed.
            var keys = completions.Select(c => c.Claim.Key).ToArray();
            var handler = completions.Count > 0 ? completions[0].Claim.HandlerName : "?";
            var errors = string.Join("; ", failed.Select(e => e.Message));
            Log.HandlerCommandsFailed(_store.Logger, failed[0], failed.Count, handler, string.Join(", ", keys), errors);
            throw new RedisCommandFailedException(keys, failed);
        }
    }

    /// <summary>
    /// One EXEC: the handler's writes, records with results, our status set to committed and the leftover claims
    /// deleted, on the one condition that our status still says in progress (no other worker can have taken a key).
    /// </summary>
    private async Task CommitWithTransactionAsync(SlotGroup group, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox)
    {
        var lease = group.Lease;
        var transaction = group.RealTransaction(_store);
        transaction.AddCondition(Condition.StringEqual(lease.Status, RedisIdempotencyStore.InProgressStatus));
        foreach (var completion in completions)
        {
            if (_store.RecordToWrite(completion) is { } record)
            {
                _ = transaction.StringSetAsync(_store.GetKey(completion.Claim.HandlerName, completion.Claim.Key), record, _store.Options.Retention);
            }
        }

        _ = transaction.StringSetAsync(lease.Status, RedisIdempotencyStore.CommittedStatus, _store.CommittedStatusTtl);
        var leftovers = _store.Leftovers(group.Claimed, completions);
        if (leftovers.Count > 0)
        {
            // Compare-and-delete: a key evicted and claimed afresh by another worker is not ours to delete.
            RedisIdempotencyStore.QueueReleaseClaims(transaction, lease, leftovers);
        }

        AddOutbox(transaction, outbox);
        if (!await transaction.ExecuteAsync().ConfigureAwait(false))
        {
            // Nothing was applied: neither the handler's writes nor the completion. Rollback releases what is still ours.
            group.Transaction = null;
            throw new ClaimLostException(completions.Count > 0 ? completions[0].Claim.Key : group.Claimed[0].Key);
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

    /// <summary>What a transaction holds in one key space (a cluster's hash slot, or the whole standalone server).</summary>
    private sealed class SlotGroup(RedisLease lease)
    {
        public RedisLease Lease { get; } = lease;

        /// <summary>Gets the keys this group claimed (the commit releases those it does not complete).</summary>
        public List<ClaimRequest> Claimed { get; } = [];

        /// <summary>Gets the keys of a claim whose reply never came: the script may have run, so a rollback releases them too.</summary>
        public List<ClaimRequest> MaybeClaimed { get; } = [];

        /// <summary>Gets or sets the MULTI/EXEC of this group, once a handler asked for it (null: none, or dropped).</summary>
        public ITransaction? Transaction
        {
            get => _transaction;
            set
            {
                _transaction = value;
                HandlerView = null;
            }
        }

        /// <summary>Gets the handler's view of <see cref="Transaction"/>, which keeps the tasks of the commands queued.</summary>
        public ITransaction? HandlerView { get; private set; }

        private ITransaction? _transaction;

        /// <summary>Gets or sets a value indicating whether a claim was sent (the status may exist).</summary>
        public bool ClaimSent { get; set; }

        /// <summary>Gets or sets a value indicating whether this group committed (a rollback leaves it alone).</summary>
        public bool Committed { get; set; }

        /// <summary>Gets the MULTI/EXEC the handler writes in (its view, see <see cref="RecordingTransaction"/>).</summary>
        public ITransaction RedisTransaction(RedisIdempotencyStore store)
        {
            var transaction = RealTransaction(store);
            return HandlerView ??= RecordingTransaction.Wrap(transaction);
        }

        /// <summary>Gets the MULTI/EXEC itself, for the store's own commands.</summary>
        public ITransaction RealTransaction(RedisIdempotencyStore store) => _transaction ??= store.Database.CreateTransaction();
    }
}
