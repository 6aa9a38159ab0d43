using Idempotency;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Builds processors from the container; adapters' hosted services use it.</summary>
internal static class IdempotencyServiceProviderExtensions
{
    /// <summary>
    /// Creates the processor of one handler: the registered store, the handler's validated options, and a
    /// <typeparamref name="THandler"/> resolved from a fresh scope for every message (or batch).
    /// </summary>
    /// <typeparam name="THandler">The handler type, registered in the container (scoped is typical).</typeparam>
    /// <param name="services">The root service provider.</param>
    /// <param name="handlerName">The handler name whose options to use.</param>
    /// <returns>The processor.</returns>
    internal static IdempotentProcessor CreateIdempotentProcessor<THandler>(this IServiceProvider services, string handlerName)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(services);
        var scopes = services.GetRequiredService<IServiceScopeFactory>();
        IIdempotentMessageHandler handler = typeof(IIdempotentBatchHandler).IsAssignableFrom(typeof(THandler))
            ? new ScopedBatchHandler<THandler>(scopes)
            : new ScopedMessageHandler<THandler>(scopes);
        return services.CreateIdempotentProcessor(handlerName, handler);
    }

    /// <summary>Creates the processor of one handler with a handler instance you supply.</summary>
    /// <param name="services">The root service provider.</param>
    /// <param name="handlerName">The handler name whose options to use.</param>
    /// <param name="handler">The handler.</param>
    /// <returns>The processor.</returns>
    internal static IdempotentProcessor CreateIdempotentProcessor(this IServiceProvider services, string handlerName, IIdempotentMessageHandler handler)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        var store = services.GetService<IIdempotencyStore>()
            ?? throw new InvalidOperationException("No idempotency store is registered: call UsePostgres(...), UseRedis(...) or UseStore(...) on AddIdempotency().");
        var options = services.GetRequiredService<IOptionsMonitor<IdempotencyOptions>>().Get(handlerName);
        if (string.IsNullOrEmpty(options.HandlerName))
        {
            options.HandlerName = handlerName;
        }

        var logger = services.GetService<ILoggerFactory>()?.CreateLogger($"Idempotency.Handler.{handlerName}");
        return new IdempotentProcessor(store, handler, options, logger, services.GetService<TimeProvider>());
    }

    private class ScopedMessageHandler<THandler>(IServiceScopeFactory scopes) : IIdempotentMessageHandler
        where THandler : class, IIdempotentMessageHandler
    {
        protected IServiceScopeFactory Scopes => scopes;

        public async ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            var scope = scopes.CreateAsyncScope();
            await using var scopeScope = scope.ConfigureAwait(false);
            await scope.ServiceProvider.GetRequiredService<THandler>().HandleAsync(context, cancellationToken).ConfigureAwait(false);
        }
    }

    private sealed class ScopedBatchHandler<THandler>(IServiceScopeFactory scopes) : ScopedMessageHandler<THandler>(scopes), IIdempotentBatchHandler
        where THandler : class, IIdempotentMessageHandler
    {
        public async ValueTask HandleBatchAsync(BatchContext batch, CancellationToken cancellationToken)
        {
            var scope = Scopes.CreateAsyncScope();
            await using var scopeScope = scope.ConfigureAwait(false);
            await ((IIdempotentBatchHandler)scope.ServiceProvider.GetRequiredService<THandler>()).HandleBatchAsync(batch, cancellationToken).ConfigureAwait(false);
        }
    }
}
