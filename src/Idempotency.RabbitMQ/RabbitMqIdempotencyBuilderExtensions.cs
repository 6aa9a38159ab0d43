using Idempotency;
using Idempotency.DependencyInjection;
using Idempotency.RabbitMQ;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers idempotent RabbitMQ consumers as hosted services.</summary>
public static class RabbitMqIdempotencyBuilderExtensions
{
    private const string Broker = "rabbitmq";

    /// <summary>
    /// Registers a hosted <see cref="IdempotentRabbitMqConsumerService"/> for <typeparamref name="THandler"/>: it consumes
    /// <see cref="RabbitMqIdempotencyOptions.Queue"/> with the handler's options (see <c>ConfigureHandler</c>) and the registered
    /// store, resolving the handler from a fresh scope per message or batch. Options are validated when the host starts.
    /// Calling it again with the same <paramref name="handlerName"/> adds configuration, not a second consumer; a name used
    /// by another broker's consumer is refused.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The builder.</param>
    /// <param name="handlerName">The handler name, which scopes keys and names these consumer options and the handler's options.</param>
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
        ArgumentNullException.ThrowIfNull(configure);
        return Add<THandler>(builder, handlerName, configure, section: null, connection);
    }

    /// <summary>
    /// Registers a hosted RabbitMQ consumer for <typeparamref name="THandler"/> with its options bound from a configuration
    /// section (for example <c>configuration.GetSection("Consumers:orders")</c>), the handler's options
    /// (<see cref="IdempotencyOptions"/>) from the section's <c>Handler</c> child; <paramref name="configure"/> runs after
    /// the binding. Otherwise the same as the other overload.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The builder.</param>
    /// <param name="handlerName">The handler name, which scopes keys and names these consumer options and the handler's options.</param>
    /// <param name="section">The consumer's configuration section (<c>Queue</c>, <c>Concurrency</c>, <c>PrefetchCount</c>..., and <c>Handler</c>).</param>
    /// <param name="configure">Sets what configuration cannot hold (a key selector, observers), or overrides it.</param>
    /// <param name="connection">Returns the connection to consume on; when <see langword="null"/>, a registered <see cref="IConnection"/>.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder AddRabbitMqConsumer<THandler>(
        this IIdempotencyBuilder builder,
        string handlerName,
        IConfiguration section,
        Action<RabbitMqIdempotencyOptions>? configure = null,
        Func<IServiceProvider, CancellationToken, ValueTask<IConnection>>? connection = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(section);
        return Add<THandler>(builder, handlerName, configure, section, connection);
    }

    private static IIdempotencyBuilder Add<THandler>(
        IIdempotencyBuilder builder,
        string handlerName,
        Action<RabbitMqIdempotencyOptions>? configure,
        IConfiguration? section,
        Func<IServiceProvider, CancellationToken, ValueTask<IConnection>>? connection)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.TryAddScoped<THandler>();
        if (!ConsumerRegistration.Register(builder, Broker, handlerName, configure, section))
        {
            return builder;
        }

        builder.Services.AddSingleton<IHostedService>(sp =>
        {
            var options = ConsumerRegistration.GetOptions<RabbitMqIdempotencyOptions>(sp, handlerName);
            var logger = sp.GetService<ILoggerFactory>()?.CreateLogger($"Idempotency.RabbitMQ.{handlerName}");
            Func<CancellationToken, ValueTask<IConnection>> open = connection is null
                ? _ => ValueTask.FromResult(sp.GetService<IConnection>() ?? throw new InvalidOperationException(
                    $"AddRabbitMqConsumer(\"{handlerName}\"): no RabbitMQ IConnection is registered; register one or pass the connection factory argument."))
                : ct => connection(sp, ct);
            return new IdempotentRabbitMqConsumerService(open, sp.CreateIdempotentProcessor<THandler>(handlerName), options, logger)
            {
                Health = ConsumerRegistration.Heartbeat(sp, $"{Broker}:{handlerName}"),
                TimeProvider = sp.GetService<TimeProvider>(),
            };
        });
        return builder;
    }
}
