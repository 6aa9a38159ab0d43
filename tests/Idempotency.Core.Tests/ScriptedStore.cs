using Idempotency.InMemory;
using Idempotency.Outbox;
using Idempotency.Storage;

namespace Idempotency.Core.Tests;

/// <summary>Where a <see cref="ScriptedStore"/> throws.</summary>
internal enum StorePhase
{
    None,
    Begin,
    Claim,
    Commit,
}

/// <summary>The error a <see cref="ScriptedStore"/> throws; its kind is what the store's classifier reports for it.</summary>
internal sealed class ScriptedStoreException(StoreFailureKind kind) : Exception($"scripted {kind}")
{
    public StoreFailureKind Kind { get; } = kind;
}

/// <summary>
/// An in-memory store (claims at commit when asked) that fails at a chosen phase of its own work with an error of a chosen
/// kind, can report its transaction broken, and can stop answering pings: every failure origin, one at a time.
/// </summary>
internal sealed class ScriptedStore : IDeferredClaimStore
{
    private readonly InMemoryIdempotencyStore _inner = new();

    public InMemoryIdempotencyStore Inner => _inner;

    public StorePhase FailAt { get; set; }

    public Exception? Failure { get; set; }

    public bool TransactionBroken { get; set; }

    public bool PingFails { get; set; }

    public int Pings { get; private set; }

    public string Name => "scripted";

    public int MaxKeyBytes => 1000;

    public async ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        Throw(StorePhase.Begin);
        return new Transaction(this, (InMemoryIdempotencyStore.InMemoryTransaction)await _inner.BeginAsync(cancellationToken));
    }

    public bool IsUnavailable(Exception exception) => false;

    public ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default) => _inner.FindProcessedAsync(request, cancellationToken);

    public ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default) => _inner.FindProcessedBatchAsync(requests, cancellationToken);

    public StoreFailure ClassifyFailure(Exception exception) =>
        exception is ScriptedStoreException scripted ? new StoreFailure(scripted.Kind, exception.Message) : StoreFailure.Outage(exception);

    public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default)
    {
        Pings++;
        return ValueTask.FromResult(!PingFails);
    }

    private void Throw(StorePhase phase)
    {
        if (FailAt == phase && Failure is { } failure)
        {
            throw failure;
        }
    }

    private sealed class Transaction(ScriptedStore store, InMemoryIdempotencyStore.InMemoryTransaction inner) : IDeferredClaimTransaction
    {
        public InMemoryIdempotencyStore.InMemoryTransaction Inner => inner;

        public bool IsBroken => store.TransactionBroken;

        public ValueTask<ClaimResult> ClaimAsync(ClaimRequest request, CancellationToken cancellationToken = default)
        {
            store.Throw(StorePhase.Claim);
            return inner.ClaimAsync(request, cancellationToken);
        }

        public ValueTask<IReadOnlyList<ClaimResult>> ClaimBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
        {
            store.Throw(StorePhase.Claim);
            return inner.ClaimBatchAsync(requests, cancellationToken);
        }

        public ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
        {
            store.Throw(StorePhase.Commit);
            return inner.CommitAsync(completions, outbox, cancellationToken);
        }

        public ValueTask<ClaimResult> ClaimAndCommitAsync(CompletionRecord completion, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
        {
            store.Throw(StorePhase.Commit);
            return inner.ClaimAndCommitAsync(completion, outbox, cancellationToken);
        }

        public ValueTask RollbackAsync(CancellationToken cancellationToken = default) => inner.RollbackAsync(cancellationToken);

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
