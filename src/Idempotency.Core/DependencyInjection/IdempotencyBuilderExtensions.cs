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
        builder.Services.AddSingleton(new Idempotency.DependencyInjection.ConfiguredHandlerName(handlerName));
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
        builder.Services.AddSingleton(new Idempotency.DependencyInjection.ConfiguredHandlerName(handlerName));
        builder.Services.AddOptions<IdempotencyOptions>(handlerName)
            .Configure(options => options.HandlerName = handlerName)
            .Bind(section)
            .ValidateOnStart();
        return builder;
    }

    /// <summary>
    /// Registers the pipeline of <typeparamref name="THandler"/> under <paramref name="handlerName"/> for a consume loop you
    /// keep (the broker packages' drop-in steps take it): resolve it with
    /// <c>GetRequiredKeyedService&lt;IdempotentProcessor&gt;(handlerName)</c>. The handler is resolved from a fresh scope per
    /// message; its options come from <c>ConfigureHandler</c> with the same name (or <paramref name="section"/>).
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The builder.</param>
    /// <param name="handlerName">The handler name, which scopes its keys.</param>
    /// <param name="section">Optional configuration section holding the handler's <see cref="IdempotencyOptions"/>.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    /// <exception cref="InvalidOperationException">The name is registered already for a consumer.</exception>
    public static IIdempotencyBuilder AddIdempotentProcessor<THandler>(this IIdempotencyBuilder builder, string handlerName, IConfiguration? section = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        var existing = Idempotency.DependencyInjection.ConsumerRegistration.FindRegistered(builder.Services, handlerName);
        if (existing is not null)
        {
            throw new InvalidOperationException($"Handler name '{handlerName}' is registered already ({existing.Kind}); each processor needs its own name.");
        }

        var options = builder.Services.AddOptions<IdempotencyOptions>(handlerName).Configure(o => o.HandlerName = handlerName);
        if (section is not null)
        {
            options.Bind(section);
        }

        options.ValidateOnStart();
        builder.Services.TryAddScoped<THandler>();
        builder.Services.AddSingleton(new Idempotency.DependencyInjection.RegisteredHandlerName(handlerName, "processor"));
        builder.Services.AddKeyedSingleton(handlerName, (sp, _) => sp.CreateIdempotentProcessor<THandler>(handlerName));
        return builder;
    }
}
