using System.Text;

namespace Idempotency;

/// <summary>Validation of idempotency keys.</summary>
public static class IdempotencyKey
{
    /// <summary>Checks a key against the rules every store relies on.</summary>
    /// <param name="key">The key taken from the message.</param>
    /// <param name="maxBytes">The maximum length in UTF-8 bytes.</param>
    /// <returns><see langword="null"/> when valid, else why it is not.</returns>
    public static string? GetValidationError(string? key, int maxBytes)
    {
        if (key is null)
        {
            return "The message has no idempotency key.";
        }

        if (key.Length == 0 || string.IsNullOrWhiteSpace(key))
        {
            return "The idempotency key is empty.";
        }

        // Cheap upper bound first: a string of n chars never needs more than 3n UTF-8 bytes.
        if (key.Length * 3 > maxBytes)
        {
            var bytes = Encoding.UTF8.GetByteCount(key);
            if (bytes > maxBytes)
            {
                return $"The idempotency key is {bytes} UTF-8 bytes long; the maximum is {maxBytes}.";
            }
        }

        if (key.Contains('\0', StringComparison.Ordinal))
        {
            return "The idempotency key contains a NUL character.";
        }

        // A lone surrogate has no UTF-8 form: a store would fail to encode it (or replace it, merging two keys).
        if (IndexOfLoneSurrogate(key) is var invalid and >= 0)
        {
            return $"The idempotency key is not valid Unicode (a lone surrogate at index {invalid}).";
        }

        return null;
    }

    private static int IndexOfLoneSurrogate(string key)
    {
        for (var i = 0; i < key.Length; i++)
        {
            if (!char.IsSurrogate(key[i]))
            {
                continue;
            }

            if (char.IsHighSurrogate(key[i]) && i + 1 < key.Length && char.IsLowSurrogate(key[i + 1]))
            {
                i++;
                continue;
            }

            return i;
        }

        return -1;
    }

    /// <summary>Turns key bytes into the key string exactly: two different byte strings never give the same key.</summary>
    /// <param name="bytes">The key's bytes as they arrived.</param>
    /// <param name="encoding">How to write them; <see cref="KeyBytesEncoding.Utf8"/> refuses bytes that are not valid UTF-8.</param>
    /// <param name="key">The key, or <see langword="null"/> when refused.</param>
    /// <param name="error">Why the bytes were refused, or <see langword="null"/>.</param>
    /// <returns><see langword="true"/> when <paramref name="key"/> was set.</returns>
    public static bool TryDecode(ReadOnlySpan<byte> bytes, KeyBytesEncoding encoding, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? key, out string? error)
    {
        error = null;
        switch (encoding)
        {
            case KeyBytesEncoding.Hex:
                key = Convert.ToHexStringLower(bytes);
                return true;
            case KeyBytesEncoding.Base64:
                key = Convert.ToBase64String(bytes);
                return true;
            default:
                if (!System.Text.Unicode.Utf8.IsValid(bytes))
                {
                    key = null;
                    error = $"The idempotency key's {bytes.Length} bytes are not valid UTF-8; choose {nameof(KeyBytesEncoding)}.{nameof(KeyBytesEncoding.Hex)} or {nameof(KeyBytesEncoding.Base64)} for binary keys.";
                    return false;
                }

                key = Encoding.UTF8.GetString(bytes);
                return true;
        }
    }

    /// <summary>Throws when the key is not valid.</summary>
    /// <param name="key">The key taken from the message.</param>
    /// <param name="maxBytes">The maximum length in UTF-8 bytes.</param>
    /// <exception cref="InvalidIdempotencyKeyException">The key is missing, empty or too long.</exception>
    public static void Validate(string? key, int maxBytes)
    {
        var error = GetValidationError(key, maxBytes);
        if (error is not null)
        {
            throw new InvalidIdempotencyKeyException(error);
        }
    }
}
