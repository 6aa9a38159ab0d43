using Idempotency.Health;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Idempotency.DependencyInjection;

/// <summary>
/// The registration rules every adapter shares, so that the same call means the same thing on Kafka, RabbitMQ and SQS:
/// one call per consumer carries the handler name, which names both the consumer's options and the handler's
/// <see cref="IdempotencyOptions"/>; options bind from a configuration section (the handler's from its <c>Handler</c>
/// child); calling again with the same name adds configuration, never a second consumer; the same name on two brokers
/// is refused at registration.
/// </summary>
internal static class ConsumerRegistration
{
    /// <summary>The child section of a consumer's configuration section that holds its <see cref="IdempotencyOptions"/>.</summary>
    public const string HandlerSection = "Handler";

    /// <summary>Registers (or adds configuration to) the consumer named <paramref name="handlerName"/>.</summary>
    /// <typeparam name="TOptions">The adapter's consumer options.</typeparam>
    /// <param name="builder">The builder.</param>
    /// <param name="broker">The broker (<c>kafka</c>, <c>rabbitmq</c>, <c>sqs</c>).</param>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="configure">Sets the consumer options in code (applied after the configuration section).</param>
    /// <param name="section">Binds the consumer options, and its <c>Handler</c> child the handler's options.</param>
    /// <returns><see langword="true"/> for the first registration of the name: the caller adds the consumer's hosted service.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    /// <exception cref="InvalidOperationException">The name is registered already for another broker.</exception>
    public static bool Register<TOptions>(IIdempotencyBuilder builder, string broker, string handlerName, Action<TOptions>? configure, IConfiguration? section)
        where TOptions : IdempotentConsumerOptions
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(broker);
        var services = builder.Services;
        var existing = FindRegistered(services, handlerName);
        if (existing is not null && existing.Kind != broker)
        {
            throw new InvalidOperationException(
                $"Handler name '{handlerName}' is registered already for a {existing.Kind} consumer; a {broker} consumer needs its own name (names scope the keys).");
        }

        var handlerOptions = services.AddOptions<IdempotencyOptions>(handlerName).Configure(o => o.HandlerName = handlerName);
        var consumerOptions = services.AddOptions<TOptions>(handlerName);
        if (section is not null)
        {
            handlerOptions.Bind(section.GetSection(HandlerSection));
            consumerOptions.Bind(section);
        }

        if (configure is not null)
        {
            consumerOptions.Configure(configure);
        }

        handlerOptions.ValidateOnStart();
        consumerOptions.ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<TOptions>, ConsumerOptionsValidator<TOptions>>());
        if (existing is not null)
        {
            return false;
        }

        services.AddSingleton(new RegisteredHandlerName(handlerName, broker));
        return true;
    }

    /// <summary>Returns the validated options of a consumer, with the observers registered in the container added.</summary>
    /// <typeparam name="TOptions">The adapter's consumer options.</typeparam>
    /// <param name="services">The root provider.</param>
    /// <param name="handlerName">The handler name.</param>
    /// <returns>The options.</returns>
    public static TOptions GetOptions<TOptions>(IServiceProvider services, string handlerName)
        where TOptions : IdempotentConsumerOptions
    {
        var options = services.GetRequiredService<IOptionsMonitor<TOptions>>().Get(handlerName);
        foreach (var observer in services.GetServices<IDeliveryObserver>())
        {
            if (!options.Observers.Contains(observer))
            {
                options.Observers.Add(observer);
            }
        }

        return options;
    }

    /// <summary>Registers the heartbeat of a consumer for the health checks (when <c>AddIdempotency</c> added the registry).</summary>
    /// <param name="services">The root provider.</param>
    /// <param name="consumerName">The consumer's name, such as <c>rabbitmq:orders</c>.</param>
    /// <returns>The heartbeat, or <see langword="null"/>.</returns>
    public static ConsumerHeartbeat? Heartbeat(IServiceProvider services, string consumerName) =>
        services.GetService<ConsumerHealthRegistry>()?.Register(consumerName, services.GetService<TimeProvider>() ?? TimeProvider.System);

    /// <summary>Checks a handler name and returns what it is registered as already, if anything.</summary>
    /// <param name="services">The service collection.</param>
    /// <param name="handlerName">The handler name.</param>
    /// <returns>The earlier registration of the name, or <see langword="null"/>.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    internal static RegisteredHandlerName? FindRegistered(IServiceCollection services, string handlerName)
    {
        if (!IdentifierRules.IsValidHandlerName(handlerName))
        {
            throw new ArgumentException($"Handler name must be 1 to 200 characters of letters, digits, '.', '-', '_' or ':' (was '{handlerName}').", nameof(handlerName));
        }

        return Registered(services).FirstOrDefault(r => r.Name == handlerName);
    }

    /// <summary>Returns the handler names registered so far (consumers and processors).</summary>
    /// <param name="services">The service collection.</param>
    /// <returns>The registrations.</returns>
    internal static IEnumerable<RegisteredHandlerName> Registered(IServiceCollection services) =>
        services.Where(d => d.ServiceType == typeof(RegisteredHandlerName) && d.ImplementationInstance is RegisteredHandlerName)
            .Select(d => (RegisteredHandlerName)d.ImplementationInstance!);

    private sealed class ConsumerOptionsValidator<TOptions> : IValidateOptions<TOptions>
        where TOptions : IdempotentConsumerOptions
    {
        public ValidateOptionsResult Validate(string? name, TOptions options)
        {
            var errors = options.GetValidationErrors();
            return errors.Count == 0
                ? ValidateOptionsResult.Success
                : ValidateOptionsResult.Fail(errors.Select(error => $"Consumer '{name}': {error}"));
        }
    }
}

/// <summary>A handler name that a consumer or a processor was registered under.</summary>
/// <param name="Name">The handler name.</param>
/// <param name="Kind">The broker of its consumer, or <c>processor</c>.</param>
internal sealed record RegisteredHandlerName(string Name, string Kind);

/// <summary>A handler name that <c>ConfigureHandler</c> configured.</summary>
/// <param name="Name">The handler name.</param>
internal sealed record ConfiguredHandlerName(string Name);
