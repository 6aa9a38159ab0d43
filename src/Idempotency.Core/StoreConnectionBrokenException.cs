namespace Idempotency;

/// <summary>
/// The store's transaction was found broken (its connection failed, or the store stopped answering) after a handler
/// threw: an outage, whatever the handler's own exception (kept as the inner exception) says.
/// </summary>
public sealed class StoreConnectionBrokenException : IdempotencyException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">What broke.</param>
    /// <param name="innerException">The exception the handler threw.</param>
    public StoreConnectionBrokenException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <inheritdoc/>
    public override bool IsTransient => true;
}
