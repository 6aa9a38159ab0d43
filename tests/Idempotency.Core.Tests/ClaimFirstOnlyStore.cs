using Idempotency.InMemory;
using Idempotency.Storage;

namespace Idempotency.Core.Tests;

/// <summary>A store that claims only before the handler (no <see cref="IDeferredClaimStore"/>), as the Redis store does.</summary>
internal sealed class ClaimFirstOnlyStore : IIdempotencyStore
{
    private readonly InMemoryIdempotencyStore _inner = new();

    public string Name => "claim-first";

    public int MaxKeyBytes { get; init; } = IdempotencyOptions.MaxKeyBytesLimit;

    public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default) => _inner.BeginAsync(cancellationToken);

    public bool IsUnavailable(Exception exception) => _inner.IsUnavailable(exception);

    public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => _inner.PingAsync(cancellationToken);
}
