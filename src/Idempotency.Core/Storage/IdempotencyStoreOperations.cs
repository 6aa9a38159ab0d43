using Idempotency.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Storage;

/// <summary>Operator actions on a store, logged and counted (metric <c>idempotency.keys.forgotten</c>).</summary>
public static class IdempotencyStoreOperations
{
    /// <summary>
    /// Forgets a processed key for a handler, so that the next delivery of that key runs the handler again. Logged as a
    /// warning (event 1100) and counted in <c>idempotency.keys.forgotten</c> with tags store, handler and
    /// <c>idempotency.outcome</c> (<c>forgotten</c> or <c>not_found</c>).
    /// </summary>
    /// <param name="store">The store; it must implement <see cref="IIdempotencyKeyAdmin"/> (PostgreSQL, Redis, layered and in-memory do).</param>
    /// <param name="handlerName">The handler name that scopes the key.</param>
    /// <param name="key">The idempotency key.</param>
    /// <param name="logger">Where to log the action; <see langword="null"/> for none.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns><see langword="true"/> when a completed record was deleted; <see langword="false"/> when there was none (or it is being processed right now).</returns>
    /// <exception cref="NotSupportedException">The store cannot forget keys.</exception>
    public static async ValueTask<bool> ForgetKeyAsync(this IIdempotencyStore store, string handlerName, string key, ILogger? logger = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentException.ThrowIfNullOrEmpty(key);
        var admin = store as IIdempotencyKeyAdmin
            ?? throw new NotSupportedException($"The '{store.Name}' store cannot forget keys (it does not implement {nameof(IIdempotencyKeyAdmin)}).");
        var forgotten = await admin.ForgetKeyAsync(handlerName, key, cancellationToken).ConfigureAwait(false);
        Log.KeyForgotten(logger ?? NullLogger.Instance, key, handlerName, store.Name, forgotten);
        IdempotencyMetrics.RecordKeyForgotten(store.Name, handlerName, forgotten);
        return forgotten;
    }
}
