using System.Security.Cryptography;

namespace Idempotency;

/// <summary>The SHA-256 fingerprint of a payload, stored with each key to detect a key reused for different content.</summary>
public static class PayloadFingerprint
{
    /// <summary>The fingerprint length in bytes.</summary>
    public const int Length = SHA256.HashSizeInBytes;

    /// <summary>Computes the fingerprint of a payload.</summary>
    /// <param name="payload">The message body.</param>
    /// <returns>The 32-byte SHA-256 hash.</returns>
    public static byte[] Compute(ReadOnlySpan<byte> payload) => SHA256.HashData(payload);

    /// <summary>Formats a fingerprint as lower-case hex, as written into dead-letter headers.</summary>
    /// <param name="fingerprint">The fingerprint bytes.</param>
    /// <returns>The hex string.</returns>
    public static string ToHex(ReadOnlySpan<byte> fingerprint) => Convert.ToHexStringLower(fingerprint);
}
