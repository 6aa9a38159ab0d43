using Idempotency;
using Idempotency.Health;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the idempotency services.</summary>
public static class IdempotencyServiceCollectionExtensions
{
    /// <summary>Adds the idempotency services; harmless when called more than once.</summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Optional configuration of the builder (store, handlers, consumers).</param>
    /// <returns>The builder, for chaining.</returns>
    public static IIdempotencyBuilder AddIdempotency(this IServiceCollection services, Action<IIdempotencyBuilder>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        services.AddOptions();
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<ConsumerHealthRegistry>();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<IdempotencyOptions>, IdempotencyOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<Microsoft.Extensions.Hosting.IHostedService, Idempotency.DependencyInjection.HandlerNameCheck>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<Microsoft.Extensions.Hosting.IHostedService, Idempotency.DependencyInjection.StoreStartupCheck>());
        var builder = new IdempotencyBuilder(services);
        configure?.Invoke(builder);
        return builder;
    }

    private sealed class IdempotencyBuilder(IServiceCollection services) : IIdempotencyBuilder
    {
        public IServiceCollection Services { get; } = services;
    }
}
