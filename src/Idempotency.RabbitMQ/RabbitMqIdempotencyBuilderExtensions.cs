using Idempotency;
using Idempotency.RabbitMQ;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers idempotent RabbitMQ consumers as hosted services.</summary>
public static class RabbitMqIdempotencyBuilderExtensions
{
    /// <summary>
    /// Registers a hosted <see cref="IdempotentRabbitMqConsumerService"/> for <typeparamref name="THandler"/>: it consumes
    /// <see cref="RabbitMqIdempotencyOptions.Queue"/> with the handler's options (see <c>ConfigureHandler</c>) and the registered
    /// store, resolving the handler from a fresh scope per message or batch. Options are validated when the host starts.
    /// Calling it again with the same <paramref name="handlerName"/> adds configuration, not a second consumer.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The builder.</param>
    /// <param name="handlerName">The handler name, which scopes keys and names these consumer options.</param>
    /// <param name="configure">Sets the consumer options (queue, prefetch, concurrency, batching...).</param>
    /// <param name="connection">
    /// Returns the connection to consume on (not disposed by the consumer). When <see langword="null"/>, an <see cref="IConnection"/>
    /// registered in the container is used.
    /// </param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder AddRabbitMqConsumer<THandler>(
        this IIdempotencyBuilder builder,
        string handlerName,
        Action<RabbitMqIdempotencyOptions> configure,
        Func<IServiceProvider, CancellationToken, ValueTask<IConnection>>? connection = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.TryAddScoped<THandler>();
        services.AddOptions<RabbitMqIdempotencyOptions>(handlerName).Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<RabbitMqIdempotencyOptions>, RabbitMqOptionsValidator>());

        if (services.Any(d => d.ServiceType == typeof(RabbitMqConsumerRegistration) && d.ImplementationInstance is RabbitMqConsumerRegistration r && r.HandlerName == handlerName))
        {
            return builder;
        }

        services.AddSingleton(new RabbitMqConsumerRegistration(handlerName));
        services.AddSingleton<IHostedService>(sp =>
        {
            var options = sp.GetRequiredService<IOptionsMonitor<RabbitMqIdempotencyOptions>>().Get(handlerName);
            var logger = sp.GetService<ILoggerFactory>()?.CreateLogger($"Idempotency.RabbitMQ.{handlerName}");
            Func<CancellationToken, ValueTask<IConnection>> open = connection is null
                ? _ => ValueTask.FromResult(sp.GetService<IConnection>() ?? throw new InvalidOperationException(
                    $"AddRabbitMqConsumer(\"{handlerName}\"): no RabbitMQ IConnection is registered; register one or pass the connection factory argument."))
                : ct => connection(sp, ct);
            return new IdempotentRabbitMqConsumerService(open, sp.CreateIdempotentProcessor<THandler>(handlerName), options, logger)
            {
                Health = sp.GetService<Idempotency.Health.ConsumerHealthRegistry>()?.Register($"rabbitmq:{handlerName}", sp.GetService<TimeProvider>() ?? TimeProvider.System),
            };
        });
        return builder;
    }

    private sealed record RabbitMqConsumerRegistration(string HandlerName);

    private sealed class RabbitMqOptionsValidator : IValidateOptions<RabbitMqIdempotencyOptions>
    {
        public ValidateOptionsResult Validate(string? name, RabbitMqIdempotencyOptions options)
        {
            var errors = options.GetValidationErrors();
            return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors.Select(e => $"RabbitMQ consumer '{name}': {e}"));
        }
    }
}
