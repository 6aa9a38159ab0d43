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

        return null;
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
