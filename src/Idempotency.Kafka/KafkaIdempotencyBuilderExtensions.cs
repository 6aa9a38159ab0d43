using Confluent.Kafka;
using Idempotency;
using Idempotency.Health;
using Idempotency.Kafka;
using Idempotency.Kafka.Transactions;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers idempotent Kafka consumers and Kafka transactional processors as hosted services.</summary>
public static class KafkaIdempotencyBuilderExtensions
{
    /// <summary>
    /// Adds a hosted <see cref="KafkaIdempotentConsumerService{TKey, TValue}"/> that runs <typeparamref name="THandler"/>
    /// (resolved from a fresh scope per message or batch) for every message of the configured topics. Each call adds one
    /// more consumer, so two handlers (or two groups) can consume side by side.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped here unless it is registered already.</typeparam>
    /// <typeparam name="TKey">The message key type.</typeparam>
    /// <typeparam name="TValue">The message value type.</typeparam>
    /// <param name="builder">The idempotency builder (with a store).</param>
    /// <param name="handlerName">The handler name that scopes keys; its <see cref="IdempotencyOptions"/> come from <c>ConfigureHandler</c>.</param>
    /// <param name="consumerConfig">Consumer configuration (bootstrap servers, group id...); auto-commit is turned off.</param>
    /// <param name="configure">Sets the Kafka options; at least <see cref="KafkaIdempotencyOptions.Topics"/>.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The Kafka options are invalid (checked here, at registration).</exception>
    public static IIdempotencyBuilder AddKafkaConsumer<THandler, TKey, TValue>(
        this IIdempotencyBuilder builder,
        string handlerName,
        ConsumerConfig consumerConfig,
        Action<KafkaIdempotencyOptions<TKey, TValue>> configure)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentNullException.ThrowIfNull(consumerConfig);
        ArgumentNullException.ThrowIfNull(configure);
        var options = new KafkaIdempotencyOptions<TKey, TValue>();
        configure(options);
        options.Validate();
        if (options.Topics.Count == 0)
        {
            throw new ArgumentException($"{nameof(KafkaIdempotencyOptions.Topics)} must name at least one topic for a hosted consumer.", nameof(configure));
        }

        builder.ConfigureHandler(handlerName);
        builder.Services.TryAddScoped<THandler>();
        builder.Services.AddSingleton<IHostedService>(sp => new KafkaIdempotentConsumerService<TKey, TValue>(() =>
        {
            var consumer = IdempotentKafkaConsumer<TKey, TValue>.Create(
                consumerConfig,
                sp.CreateIdempotentProcessor<THandler>(handlerName),
                options,
                logger: sp.GetService<ILoggerFactory>()?.CreateLogger("Idempotency.Kafka." + handlerName),
                timeProvider: sp.GetService<TimeProvider>());
            var processorLogger = sp.GetService<ILoggerFactory>()?.CreateLogger("Idempotency.Kafka." + handlerName);
            if (processorLogger is not null)
            {
                _ = KafkaRetentionCheck.WarnIfRetentionTooShortAsync(consumerConfig, options.Topics, sp.CreateIdempotentProcessor<THandler>(handlerName).Options, processorLogger);
            }

            consumer.Heartbeat = sp.GetService<ConsumerHealthRegistry>()?.Register($"kafka:{handlerName}:{consumerConfig.GroupId}", sp.GetService<TimeProvider>() ?? TimeProvider.System);
            return consumer;
        }));
        return builder;
    }

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
