namespace Idempotency.Storage;

/// <summary>How a store classifies an error raised by its own work, with a description a person can act on.</summary>
/// <param name="Kind">The kind of failure.</param>
/// <param name="Description">What went wrong and, for a misconfiguration, how to fix it.</param>
public readonly record struct StoreFailure(StoreFailureKind Kind, string Description)
{
    /// <summary>Creates an outage described by the exception's message.</summary>
    /// <param name="exception">The error.</param>
    /// <returns>The outage.</returns>
    public static StoreFailure Outage(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        return new(StoreFailureKind.Outage, exception.Message);
    }
}
