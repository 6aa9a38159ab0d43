using Idempotency;
using Idempotency.Storage;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Builder methods shared by every store and adapter.</summary>
public static class IdempotencyBuilderExtensions
{
    /// <summary>Uses the given store for every handler, replacing any store registered before.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="factory">Creates the store once.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UseStore(this IIdempotencyBuilder builder, Func<IServiceProvider, IIdempotencyStore> factory)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(factory);
        builder.Services.Replace(ServiceDescriptor.Singleton(factory));
        return builder;
    }

    /// <summary>Configures the options of one handler; they are validated when the host starts.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="handlerName">The handler name, which scopes its keys.</param>
    /// <param name="configure">Sets the options.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder ConfigureHandler(this IIdempotencyBuilder builder, string handlerName, Action<IdempotencyOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        builder.Services.AddOptions<IdempotencyOptions>(handlerName)
            .Configure(options =>
            {
                options.HandlerName = handlerName;
                configure?.Invoke(options);
            })
            .ValidateOnStart();
        return builder;
    }

    /// <summary>Binds the options of one handler from configuration (e.g. the section <c>Idempotency:Handlers:orders</c>); validated when the host starts.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="handlerName">The handler name, which scopes its keys.</param>
    /// <param name="section">The configuration section holding <see cref="IdempotencyOptions"/> properties.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder ConfigureHandler(this IIdempotencyBuilder builder, string handlerName, IConfiguration section)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentNullException.ThrowIfNull(section);
        builder.Services.AddOptions<IdempotencyOptions>(handlerName)
            .Configure(options => options.HandlerName = handlerName)
            .Bind(section)
            .ValidateOnStart();
        return builder;
    }
}
