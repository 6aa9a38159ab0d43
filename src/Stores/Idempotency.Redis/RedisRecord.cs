namespace Idempotency.Redis;

/// <summary>
/// The values of a key. A claim: <c>'P'</c>, the claiming transaction's 32-character token, one byte with the
/// fingerprint's length, the fingerprint (committed when the token's status key says so). A record: <c>'D'</c> (no
/// result) or <c>'R'</c> (with result), one byte with the fingerprint's length, the fingerprint, then the result bytes.
/// </summary>
internal static class RedisRecord
{
    /// <summary>The length of a transaction token (a GUID in "N" format).</summary>
    public const int TokenLength = 32;

    private const byte Claim = (byte)'P';
    private const byte WithoutResult = (byte)'D';
    private const byte WithResult = (byte)'R';

    /// <summary>Encodes the claim value a transaction writes to each key it claims.</summary>
    public static byte[] EncodeClaim(byte[] token, ReadOnlyMemory<byte> fingerprint)
    {
        ThrowIfTooLong(fingerprint);
        var value = new byte[1 + TokenLength + 1 + fingerprint.Length];
        value[0] = Claim;
        token.CopyTo(value, 1);
        value[1 + TokenLength] = (byte)fingerprint.Length;
        fingerprint.Span.CopyTo(value.AsSpan(2 + TokenLength));
        return value;
    }

    /// <summary>Whether a value is a claim of the transaction with <paramref name="token"/>.</summary>
    public static bool IsClaimOf(ReadOnlySpan<byte> value, ReadOnlySpan<byte> token) =>
        value.Length > TokenLength && value[0] == Claim && value.Slice(1, TokenLength).SequenceEqual(token);

    /// <summary>The token of a claim value, or <see langword="null"/> when the value is not a claim.</summary>
    public static string? ClaimToken(byte[]? value) =>
        value is { Length: > TokenLength } && value[0] == Claim ? System.Text.Encoding.ASCII.GetString(value, 1, TokenLength) : null;

    /// <summary>Reads the fingerprint of a claim value as a record without result (its transaction committed).</summary>
    public static bool TryDecodeCommittedClaim(byte[] value, out ReadOnlyMemory<byte> fingerprint)
    {
        fingerprint = default;
        if (value.Length < 2 + TokenLength || value[0] != Claim || value.Length < 2 + TokenLength + value[1 + TokenLength])
        {
            return false;
        }

        fingerprint = value.AsMemory(2 + TokenLength, value[1 + TokenLength]);
        return true;
    }

    /// <summary>Encodes a record.</summary>
    public static byte[] Encode(ReadOnlyMemory<byte> fingerprint, ReadOnlyMemory<byte>? result)
    {
        ThrowIfTooLong(fingerprint);
        var resultLength = result?.Length ?? 0;
        var value = new byte[2 + fingerprint.Length + resultLength];
        value[0] = result is null ? WithoutResult : WithResult;
        value[1] = (byte)fingerprint.Length;
        fingerprint.Span.CopyTo(value.AsSpan(2));
        result?.Span.CopyTo(value.AsSpan(2 + fingerprint.Length));
        return value;
    }

    /// <summary>Decodes a value that is a record; returns <see langword="false"/> for a claim or an older version's lease token.</summary>
    public static bool TryDecode(byte[]? value, out ReadOnlyMemory<byte> fingerprint, out ReadOnlyMemory<byte>? result)
    {
        fingerprint = default;
        result = null;
        if (value is not { Length: >= 2 } || value[0] is not (WithoutResult or WithResult) || value.Length < 2 + value[1])
        {
            return false;
        }

        fingerprint = value.AsMemory(2, value[1]);
        if (value[0] == WithResult)
        {
            result = value.AsMemory(2 + value[1]);
        }

        return true;
    }

    private static void ThrowIfTooLong(ReadOnlyMemory<byte> fingerprint)
    {
        if (fingerprint.Length > byte.MaxValue)
        {
            throw new ArgumentException($"A fingerprint longer than {byte.MaxValue} bytes cannot be stored in Redis (was {fingerprint.Length}).", nameof(fingerprint));
        }
    }
}
