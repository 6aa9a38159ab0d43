namespace Idempotency.Storage;

/// <summary>
/// A store that lets an operator forget a processed key, so that the next delivery of that key runs the handler again
/// (e.g. to re-apply a message after fixing data by hand). Call it through
/// <see cref="IdempotencyStoreOperations.ForgetKeyAsync"/>, which logs and counts every use.
/// </summary>
/// <remarks>
/// Only a completed record is forgotten: a key being processed right now (an uncommitted claim, a live lease) is left alone.
/// Forgetting a key gives up its protection: a redelivery of the old message is no longer a duplicate.
/// </remarks>
public interface IIdempotencyKeyAdmin
{
    /// <summary>Deletes the completed record of a key for a handler.</summary>
    /// <param name="handlerName">The handler name that scopes the key.</param>
    /// <param name="key">The idempotency key.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when a completed record was deleted; <see langword="false"/> when there was none.</returns>
    /// <exception cref="IdempotencyStoreUnavailableException">The store cannot be reached.</exception>
    ValueTask<bool> ForgetKeyAsync(string handlerName, string key, CancellationToken cancellationToken = default);
}
