namespace Idempotency.Storage;

/// <summary>A request to claim one key for one handler within a store transaction.</summary>
/// <param name="HandlerName">The handler that scopes the key.</param>
/// <param name="Key">The idempotency key, already validated.</param>
/// <param name="Fingerprint">The SHA-256 of the payload.</param>
/// <param name="ExpiresAt">When the record may be pruned.</param>
public readonly record struct ClaimRequest(string HandlerName, string Key, ReadOnlyMemory<byte> Fingerprint, DateTimeOffset ExpiresAt);
