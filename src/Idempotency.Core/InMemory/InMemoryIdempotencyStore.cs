using System.Collections.Concurrent;
using Idempotency.Outbox;
using Idempotency.Storage;

namespace Idempotency.InMemory;

/// <summary>
/// A store in process memory for unit tests of your own handlers. Not for production: nothing survives a restart,
/// and it deduplicates only within one process.
/// </summary>
/// <remarks>
/// It behaves like the database stores where tests care: a second claim of a key that is in flight waits until the
/// first transaction commits (then it is a duplicate) or rolls back (then it claims the key). Effects enlisted with
/// <see cref="InMemoryTransaction.OnCommit"/> apply only on commit.
/// </remarks>
public sealed class InMemoryIdempotencyStore : IDeferredClaimStore, IIdempotencyKeyAdmin
{
    private readonly ConcurrentDictionary<(string Handler, string Key), StoredRecord> _records = new();
    private readonly ConcurrentDictionary<(string Handler, string Key), TaskCompletionSource> _inFlight = new();
    private readonly ConcurrentQueue<OutboxMessage> _outbox = new();

    /// <inheritdoc/>
    public string Name => "memory";

    /// <summary>Gets or sets a value indicating whether the store pretends to be unreachable, to test outage handling.</summary>
    public bool Unavailable { get; set; }

    /// <summary>
    /// Gets or sets a description of a pretended misconfiguration (such as a missing table), to test how consumers
    /// stop and resume: while set, the store answers pings but every other call fails and is classified
    /// <see cref="StoreFailureKind.Misconfiguration"/>.
    /// </summary>
    public string? Misconfiguration { get; set; }

    /// <summary>Gets the number of committed records.</summary>
    public int Count => _records.Count;

    /// <summary>Gets the outgoing messages committed so far, in commit order.</summary>
    public IReadOnlyCollection<OutboxMessage> CommittedOutbox => _outbox;

    /// <summary>Gets the record of a key, if committed.</summary>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="key">The key.</param>
    /// <returns>The record, or <see langword="null"/>.</returns>
    public StoredRecord? Find(string handlerName, string key) => _records.TryGetValue((handlerName, key), out var record) ? record : null;

    /// <inheritdoc/>
    public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ThrowIfUnavailable();
        return ValueTask.FromResult<IIdempotencyTransaction>(new InMemoryTransaction(this));
    }

    /// <inheritdoc/>
    public bool IsUnavailable(Exception exception) => exception is IdempotencyStoreUnavailableException;

    /// <inheritdoc/>
    public StoreFailure ClassifyFailure(Exception exception) =>
        exception is MisconfiguredException
            ? new StoreFailure(StoreFailureKind.Misconfiguration, exception.Message)
            : StoreFailure.Outage(exception);

    /// <inheritdoc/>
    public ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default) =>
        ValueTask.FromResult<StoreFailure?>(
            Unavailable ? new StoreFailure(StoreFailureKind.Outage, "The in-memory store is set to unavailable.")
            : Misconfiguration is { } problem ? new StoreFailure(StoreFailureKind.Misconfiguration, problem)
            : null);

    /// <inheritdoc/>
    public ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();
        ThrowIfUnavailable();
        return ValueTask.FromResult<ClaimResult?>(_records.TryGetValue((request.HandlerName, request.Key), out var existing)
            ? new ClaimResult(ClaimStatus.AlreadyProcessed, existing.Fingerprint, existing.Result)
            : null);
    }

    /// <inheritdoc/>
    public ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(requests);
        cancellationToken.ThrowIfCancellationRequested();
        ThrowIfUnavailable();
        var results = new ClaimResult?[requests.Count];
        for (var i = 0; i < results.Length; i++)
        {
            results[i] = _records.TryGetValue((requests[i].HandlerName, requests[i].Key), out var existing)
                ? new ClaimResult(ClaimStatus.AlreadyProcessed, existing.Fingerprint, existing.Result)
                : null;
        }

        return ValueTask.FromResult<IReadOnlyList<ClaimResult?>>(results);
    }

    /// <inheritdoc/>
    public ValueTask<bool> ForgetKeyAsync(string handlerName, string key, CancellationToken cancellationToken = default)
    {
        ThrowIfUnavailable();
        return ValueTask.FromResult(_records.TryRemove((handlerName, key), out _));
    }

    /// <inheritdoc/>
    public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => ValueTask.FromResult(!Unavailable);

    private void ThrowIfUnavailable()
    {
        if (Unavailable)
        {
            throw new IdempotencyStoreUnavailableException("The in-memory store is set to unavailable.");
        }

        if (Misconfiguration is { } problem)
        {
            throw new MisconfiguredException(problem);
        }
    }

    /// <summary>The error of a pretended misconfiguration.</summary>
    private sealed class MisconfiguredException(string message) : InvalidOperationException(message);

    /// <summary>A committed record.</summary>
    /// <param name="Fingerprint">The payload fingerprint.</param>
    /// <param name="ExpiresAt">When it may be pruned.</param>
    /// <param name="Duration">How long the handler ran.</param>
    /// <param name="Result">The stored result, if any.</param>
    public sealed record StoredRecord(ReadOnlyMemory<byte> Fingerprint, DateTimeOffset ExpiresAt, TimeSpan Duration, ReadOnlyMemory<byte>? Result);

    /// <summary>A transaction of the in-memory store.</summary>
    public sealed class InMemoryTransaction : IDeferredClaimTransaction
    {
        private readonly InMemoryIdempotencyStore _store;
        private readonly List<((string, string) Id, TaskCompletionSource Gate)> _claims = [];
        private readonly List<Action> _onCommit = [];
        private bool _completed;

        internal InMemoryTransaction(InMemoryIdempotencyStore store) => _store = store;

        /// <summary>Enlists an effect that applies only if this transaction commits, as a database write would.</summary>
        /// <param name="effect">The effect.</param>
        public void OnCommit(Action effect)
        {
            ArgumentNullException.ThrowIfNull(effect);
            _onCommit.Add(effect);
        }

        /// <inheritdoc/>
        public async ValueTask<ClaimResult> ClaimAsync(ClaimRequest request, CancellationToken cancellationToken = default)
        {
            var id = (request.HandlerName, request.Key);
            while (true)
            {
                _store.ThrowIfUnavailable();
                if (_store._records.TryGetValue(id, out var existing))
                {
                    return new ClaimResult(ClaimStatus.AlreadyProcessed, existing.Fingerprint, existing.Result);
                }

                var gate = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                if (_store._inFlight.TryAdd(id, gate))
                {
                    if (_store._records.TryGetValue(id, out existing))
                    {
                        // Committed between the two looks: release the gate we just took.
                        _store._inFlight.TryRemove(new KeyValuePair<(string, string), TaskCompletionSource>(id, gate));
                        gate.SetResult();
                        return new ClaimResult(ClaimStatus.AlreadyProcessed, existing.Fingerprint, existing.Result);
                    }

                    _claims.Add((id, gate));
                    return ClaimResult.Claimed;
                }

                if (_store._inFlight.TryGetValue(id, out var other))
                {
                    // Wait like a database waits on a unique index held by an uncommitted insert.
                    await other.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
            }
        }

        /// <inheritdoc/>
        public async ValueTask<IReadOnlyList<ClaimResult>> ClaimBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
        {
            ArgumentNullException.ThrowIfNull(requests);
            var results = new ClaimResult[requests.Count];
            for (var i = 0; i < requests.Count; i++)
            {
                results[i] = await ClaimAsync(requests[i], cancellationToken).ConfigureAwait(false);
            }

            return results;
        }

        /// <inheritdoc/>
        public ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
        {
            ArgumentNullException.ThrowIfNull(completions);
            ArgumentNullException.ThrowIfNull(outbox);
            ObjectDisposedException.ThrowIf(_completed, this);
            _store.ThrowIfUnavailable();
            foreach (var completion in completions)
            {
                var claim = completion.Claim;
                _store._records[(claim.HandlerName, claim.Key)] = new StoredRecord(claim.Fingerprint.ToArray(), claim.ExpiresAt, completion.Duration, completion.Result?.ToArray());
            }

            foreach (var effect in _onCommit)
            {
                effect();
            }

            foreach (var message in outbox)
            {
                _store._outbox.Enqueue(message);
            }

            Release();
            return ValueTask.CompletedTask;
        }

        /// <inheritdoc/>
        public async ValueTask<ClaimResult> ClaimAndCommitAsync(CompletionRecord completion, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
        {
            // Claiming now waits for a concurrent holder of the key, as PostgreSQL's unique index does at commit.
            var claimed = await ClaimAsync(completion.Claim, cancellationToken).ConfigureAwait(false);
            if (claimed.Status != ClaimStatus.Claimed)
            {
                Release();
                return claimed;
            }

            await CommitAsync([completion], outbox, cancellationToken).ConfigureAwait(false);
            return claimed;
        }

        /// <inheritdoc/>
        public ValueTask RollbackAsync(CancellationToken cancellationToken = default)
        {
            Release();
            return ValueTask.CompletedTask;
        }

        /// <inheritdoc/>
        public ValueTask DisposeAsync()
        {
            Release();
            return ValueTask.CompletedTask;
        }

        private void Release()
        {
            if (_completed)
            {
                return;
            }

            _completed = true;
            _onCommit.Clear();
            foreach (var (id, gate) in _claims)
            {
                _store._inFlight.TryRemove(new KeyValuePair<(string, string), TaskCompletionSource>(id, gate));
                gate.TrySetResult();
            }

            _claims.Clear();
        }
    }
}
