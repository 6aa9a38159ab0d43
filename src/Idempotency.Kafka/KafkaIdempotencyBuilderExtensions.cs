using Confluent.Kafka;
using Idempotency;
using Idempotency.Health;
using Idempotency.Kafka;
using Idempotency.DependencyInjection;
using Idempotency.Kafka.Transactions;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers idempotent Kafka consumers and Kafka transactional processors as hosted services.</summary>
public static class KafkaIdempotencyBuilderExtensions
{
    /// <summary>
    /// Adds a hosted <see cref="KafkaIdempotentConsumerService{TKey, TValue}"/> that runs <typeparamref name="THandler"/>
    /// (resolved from a fresh scope per message or batch) for every message of the configured topics. One call per
    /// consumer: <paramref name="handlerName"/> names the consumer, its options and the handler's
    /// <see cref="IdempotencyOptions"/> (set them with <c>ConfigureHandler</c> under the same name). Calling again with
    /// the same name adds option configuration to that consumer, never a second one.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped here unless it is registered already.</typeparam>
    /// <typeparam name="TKey">The message key type.</typeparam>
    /// <typeparam name="TValue">The message value type.</typeparam>
    /// <param name="builder">The idempotency builder (with a store).</param>
    /// <param name="handlerName">The handler name that scopes keys and names the consumer.</param>
    /// <param name="consumerConfig">Consumer configuration (bootstrap servers, group id...); auto-commit is turned off.</param>
    /// <param name="configure">Sets the Kafka options; at least <see cref="KafkaIdempotencyOptions.Topics"/>.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    /// <exception cref="InvalidOperationException">The name is registered already for another broker, or with another handler or message types.</exception>
    /// <remarks>The options are validated when the host starts; every error names the setting.</remarks>
    public static IIdempotencyBuilder AddKafkaConsumer<THandler, TKey, TValue>(
        this IIdempotencyBuilder builder,
        string handlerName,
        ConsumerConfig consumerConfig,
        Action<KafkaIdempotencyOptions<TKey, TValue>> configure)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(configure);
        return AddKafkaConsumerCore<THandler, TKey, TValue>(builder, handlerName, consumerConfig, configure, section: null);
    }

    /// <summary>
    /// Adds a hosted Kafka consumer whose options bind from <paramref name="section"/> (such as
    /// <c>Idempotency:Consumers:orders</c>), its <c>Handler</c> child binding the handler's <see cref="IdempotencyOptions"/>;
    /// <paramref name="configure"/> runs after the binding. Otherwise as
    /// <see cref="AddKafkaConsumer{THandler, TKey, TValue}(IIdempotencyBuilder, string, ConsumerConfig, Action{KafkaIdempotencyOptions{TKey, TValue}})"/>.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped here unless it is registered already.</typeparam>
    /// <typeparam name="TKey">The message key type.</typeparam>
    /// <typeparam name="TValue">The message value type.</typeparam>
    /// <param name="builder">The idempotency builder (with a store).</param>
    /// <param name="handlerName">The handler name that scopes keys and names the consumer.</param>
    /// <param name="consumerConfig">Consumer configuration (bootstrap servers, group id...); auto-commit is turned off.</param>
    /// <param name="section">The consumer's configuration section (<c>Topics</c>, <c>Concurrency</c>, <c>BatchSize</c>..., and <c>Handler</c>).</param>
    /// <param name="configure">Optional code configuration, applied after the section (selectors, observers).</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    /// <exception cref="InvalidOperationException">The name is registered already for another broker, or with another handler or message types.</exception>
    public static IIdempotencyBuilder AddKafkaConsumer<THandler, TKey, TValue>(
        this IIdempotencyBuilder builder,
        string handlerName,
        ConsumerConfig consumerConfig,
        IConfiguration section,
        Action<KafkaIdempotencyOptions<TKey, TValue>>? configure = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(section);
        return AddKafkaConsumerCore<THandler, TKey, TValue>(builder, handlerName, consumerConfig, configure, section);
    }

    private static IIdempotencyBuilder AddKafkaConsumerCore<THandler, TKey, TValue>(
        IIdempotencyBuilder builder,
        string handlerName,
        ConsumerConfig consumerConfig,
        Action<KafkaIdempotencyOptions<TKey, TValue>>? configure,
        IConfiguration? section)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(consumerConfig);
        var registration = new KafkaConsumerRegistration(handlerName, typeof(THandler), typeof(TKey), typeof(TValue));
        var earlier = builder.Services.Select(d => d.ImplementationInstance).OfType<KafkaConsumerRegistration>().FirstOrDefault(r => r.HandlerName == handlerName);
        if (earlier is not null && earlier != registration)
        {
            throw new InvalidOperationException(
                $"Kafka consumer '{handlerName}' is registered already with handler {earlier.Handler.Name} over <{earlier.Key.Name}, {earlier.Value.Name}>; a second call with the same name may only add option configuration.");
        }

        if (!ConsumerRegistration.Register(builder, "kafka", handlerName, configure, section))
        {
            return builder;
        }

        builder.Services.AddSingleton(registration);
        builder.Services.AddOptions<KafkaIdempotencyOptions<TKey, TValue>>(handlerName)
            .Validate(o => o.Topics.Count > 0, $"Consumer '{handlerName}': {nameof(KafkaIdempotencyOptions.Topics)} must name at least one topic for a hosted consumer.");
        builder.Services.TryAddScoped<THandler>();
        builder.Services.AddSingleton<IHostedService>(sp => new KafkaIdempotentConsumerService<TKey, TValue>(() =>
        {
            var options = ConsumerRegistration.GetOptions<KafkaIdempotencyOptions<TKey, TValue>>(sp, handlerName);
            var logger = sp.GetService<ILoggerFactory>()?.CreateLogger("Idempotency.Kafka." + handlerName);
            var processor = sp.CreateIdempotentProcessor<THandler>(handlerName);
            var consumer = IdempotentKafkaConsumer<TKey, TValue>.Create(consumerConfig, processor, options, logger: logger, timeProvider: sp.GetService<TimeProvider>());
            if (logger is not null)
            {
                _ = KafkaRetentionCheck.WarnIfRetentionTooShortAsync(consumerConfig, options.Topics, processor.Options, logger, store: processor.Store);
            }

            consumer.Heartbeat = ConsumerRegistration.Heartbeat(sp, consumer.Name);
            return consumer;
        }));
        return builder;
    }

    /// <summary>What the first registration of a Kafka consumer name fixed: a later call with that name may only add configuration.</summary>
    private sealed record KafkaConsumerRegistration(string HandlerName, Type Handler, Type Key, Type Value);

    /// <summary>
    /// Adds a hosted <see cref="KafkaTransactionalProcessorService"/>: the Kafka transactions mode (consume-transform-produce,
    /// no store) running <typeparamref name="THandler"/>, resolved from a fresh scope for each input message. Each call
    /// adds one more processor; give each its own <see cref="KafkaTransactionalOptions.TransactionalId"/>.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped here unless it is registered already.</typeparam>
    /// <param name="builder">The idempotency builder (no store is needed for this mode).</param>
    /// <param name="consumerConfig">Consumer settings (bootstrap servers, group id...); auto-commit off and read_committed are set.</param>
    /// <param name="producerConfig">Producer settings (bootstrap servers...); the transactional id, idempotence and acks=all are set.</param>
    /// <param name="configure">Sets at least <see cref="KafkaTransactionalOptions.Topics"/> and <see cref="KafkaTransactionalOptions.TransactionalId"/>.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The options are invalid (checked here, at registration).</exception>
    public static IIdempotencyBuilder AddKafkaTransactionalProcessor<THandler>(
        this IIdempotencyBuilder builder,
        ConsumerConfig consumerConfig,
        ProducerConfig producerConfig,
        Action<KafkaTransactionalOptions> configure)
        where THandler : class, IKafkaTransactionalHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(consumerConfig);
        ArgumentNullException.ThrowIfNull(producerConfig);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new KafkaTransactionalOptions();
        configure(options);
        var errors = options.GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException("Kafka transactional processor: " + string.Join(" ", errors), nameof(configure));
        }

        builder.Services.TryAddScoped<THandler>();
        builder.Services.AddSingleton<IHostedService>(sp => new KafkaTransactionalProcessorService(() => new KafkaTransactionalProcessor(
            consumerConfig,
            producerConfig,
            options,
            async (context, cancellationToken) =>
            {
                var scope = sp.CreateAsyncScope();
                await using var scopeScope = scope.ConfigureAwait(false);
                await scope.ServiceProvider.GetRequiredService<THandler>().HandleAsync(context, cancellationToken).ConfigureAwait(false);
            },
            sp.GetService<ILoggerFactory>()?.CreateLogger("Idempotency.Kafka.Transactions." + options.TransactionalId))));
        return builder;
    }
}
