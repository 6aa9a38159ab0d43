namespace Idempotency.Redis;

/// <summary>
/// The completion record stored as the value of a key: <c>'D'</c> (no result) or <c>'R'</c> (with result), one byte
/// with the fingerprint's length, the fingerprint, then the result bytes. A lease is a 32-character lowercase hex
/// token, so its first byte is never <c>'D'</c> or <c>'R'</c>.
/// </summary>
internal static class RedisRecord
{
    private const byte WithoutResult = (byte)'D';
    private const byte WithResult = (byte)'R';

    /// <summary>Encodes a record.</summary>
    public static byte[] Encode(ReadOnlyMemory<byte> fingerprint, ReadOnlyMemory<byte>? result)
    {
        if (fingerprint.Length > byte.MaxValue)
        {
            throw new ArgumentException($"A fingerprint longer than {byte.MaxValue} bytes cannot be stored in Redis (was {fingerprint.Length}).", nameof(fingerprint));
        }

        var resultLength = result?.Length ?? 0;
        var value = new byte[2 + fingerprint.Length + resultLength];
        value[0] = result is null ? WithoutResult : WithResult;
        value[1] = (byte)fingerprint.Length;
        fingerprint.Span.CopyTo(value.AsSpan(2));
        result?.Span.CopyTo(value.AsSpan(2 + fingerprint.Length));
        return value;
    }

    /// <summary>Decodes a value that is a record; returns <see langword="false"/> for a lease token.</summary>
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
}
