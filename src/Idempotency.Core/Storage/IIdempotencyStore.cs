namespace Idempotency.Storage;

/// <summary>
/// Where claimed keys live. An adapter drives it as: begin, claim, run the handler inside the store's
/// transaction, commit with the completion records, then acknowledge the message.
/// </summary>
/// <remarks>Implementations are thread-safe; each transaction is used by one caller at a time.</remarks>
public interface IIdempotencyStore
{
    /// <summary>Gets the store's name as used in telemetry (<c>postgres</c>, <c>redis</c>, <c>memory</c>).</summary>
    string Name { get; }

    /// <summary>Starts a transaction in which keys are claimed, the handler runs and completions are recorded.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>The open transaction; dispose it to roll back what was not committed.</returns>
    /// <exception cref="IdempotencyStoreUnavailableException">The store cannot be reached.</exception>
    ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default);

    /// <summary>Tells whether an exception, thrown by the store or by a handler using the store's connection, means the store is unreachable rather than that the message is bad.</summary>
    /// <param name="exception">The exception.</param>
    /// <returns><see langword="true"/> when the failure is the store's and is worth waiting out.</returns>
    bool IsUnavailable(Exception exception);

    /// <summary>Checks that the store answers.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when it answered.</returns>
    ValueTask<bool> PingAsync(CancellationToken cancellationToken = default);
}
