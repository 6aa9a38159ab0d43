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

    /// <summary>
    /// Gets how long the store keeps a completed key when it applies a retention of its own instead of the handler's
    /// <see cref="IdempotencyOptions.Retention"/> (the Redis store's TTL, say), so start-up checks compare the broker's
    /// redelivery horizon with the retention that is actually applied.
    /// </summary>
    /// <value><see langword="null"/> (the default) when the store keeps keys for the handler's retention.</value>
    TimeSpan? EnforcedRetention => null;

    /// <summary>Gets the longest key, in UTF-8 bytes, this store can hold; options asking for more are refused at start-up.</summary>
    /// <value>Defaults to <see cref="IdempotencyOptions.MaxKeyBytesLimit"/>.</value>
    int MaxKeyBytes => IdempotencyOptions.MaxKeyBytesLimit;

    /// <summary>
    /// Classifies an error thrown by the store's own work (begin, claim, look-up, commit, ping). Never called for an
    /// exception a handler threw. An error the store does not recognise is an <see cref="StoreFailureKind.Outage"/>:
    /// the message is never blamed for the store's work.
    /// </summary>
    /// <param name="exception">The error.</param>
    /// <returns>Its kind and a description.</returns>
    StoreFailure ClassifyFailure(Exception exception) => StoreFailure.Outage(exception);

    /// <summary>
    /// Checks that the store answers and is set up for use (its tables exist and are accessible), as at host start
    /// and while a consumer waits for a misconfiguration to be fixed.
    /// </summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="null"/> when ready; otherwise the failure.</returns>
    async ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            return await PingAsync(cancellationToken).ConfigureAwait(false)
                ? null
                : new StoreFailure(StoreFailureKind.Outage, $"The {Name} store does not answer.");
        }
        catch (Exception exception) when (exception is not OperationCanceledException)
        {
            return ClassifyFailure(exception);
        }
    }

    /// <summary>Checks that the store answers.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when it answered.</returns>
    ValueTask<bool> PingAsync(CancellationToken cancellationToken = default);
}
