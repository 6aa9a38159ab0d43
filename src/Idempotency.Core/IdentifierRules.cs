namespace Idempotency;

/// <summary>Shared validation of names that end up in storage keys and SQL identifiers.</summary>
internal static class IdentifierRules
{
    /// <summary>Checks a handler name: 1 to 200 characters of letters, digits, '.', '-', '_' or ':'.</summary>
    /// <param name="name">The candidate name.</param>
    /// <returns><see langword="true"/> when valid.</returns>
    public static bool IsValidHandlerName(string? name)
    {
        if (string.IsNullOrEmpty(name) || name.Length > 200)
        {
            return false;
        }

        foreach (var c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_' or ':'))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>Checks a SQL identifier: an ASCII letter or '_' then letters, digits or '_', at most 63 characters (PostgreSQL's limit).</summary>
    /// <param name="identifier">The candidate identifier.</param>
    /// <returns><see langword="true"/> when valid.</returns>
    public static bool IsValidSqlIdentifier(string? identifier)
    {
        if (string.IsNullOrEmpty(identifier) || identifier.Length > 63)
        {
            return false;
        }

        if (!(char.IsAsciiLetter(identifier[0]) || identifier[0] == '_'))
        {
            return false;
        }

        foreach (var c in identifier)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c == '_'))
            {
                return false;
            }
        }

        return true;
    }
}
