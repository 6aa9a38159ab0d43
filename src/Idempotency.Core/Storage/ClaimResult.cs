namespace Idempotency.Storage;

/// <summary>The answer to one <see cref="ClaimRequest"/>.</summary>
/// <param name="Status">What the claim found.</param>
/// <param name="StoredFingerprint">The fingerprint stored with an already processed key; empty otherwise.</param>
/// <param name="StoredResult">The result stored with an already processed key, when the store keeps results.</param>
public readonly record struct ClaimResult(ClaimStatus Status, ReadOnlyMemory<byte> StoredFingerprint = default, ReadOnlyMemory<byte>? StoredResult = null)
{
    /// <summary>Gets a result for a newly claimed key.</summary>
    public static ClaimResult Claimed { get; } = new(ClaimStatus.Claimed);

    /// <summary>Gets a result for a key another worker holds.</summary>
    public static ClaimResult HeldByAnother { get; } = new(ClaimStatus.HeldByAnother);
}
