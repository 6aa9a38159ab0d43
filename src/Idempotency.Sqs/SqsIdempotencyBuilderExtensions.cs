using Amazon.SQS;
using Idempotency;
using Idempotency.DependencyInjection;
using Idempotency.Sqs;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers idempotent SQS consumers as hosted services.</summary>
public static class SqsIdempotencyBuilderExtensions
{
    /// <summary>
    /// Adds a hosted <see cref="IdempotentSqsWorker"/> that consumes one queue with <typeparamref name="THandler"/>
    /// (resolved from a fresh scope per message or batch). Options are named after the handler and validated at start-up.
    /// Calling it again with the same handler name only adds configuration; it never adds a second worker. A name used by
    /// another broker's consumer is refused.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The idempotency builder.</param>
    /// <param name="handlerName">The handler name (scopes keys; names the options of <see cref="IdempotencyOptions"/> and <see cref="SqsIdempotencyOptions"/>).</param>
    /// <param name="configure">Sets the worker's options (at least <see cref="SqsIdempotencyOptions.QueueUrl"/>).</param>
    /// <param name="clientFactory">Creates the SQS client; defaults to the <see cref="IAmazonSQS"/> registered in the container.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    /// <exception cref="InvalidOperationException">The handler name is registered already for another broker.</exception>
    public static IIdempotencyBuilder AddSqsConsumer<THandler>(
        this IIdempotencyBuilder builder,
        string handlerName,
        Action<SqsIdempotencyOptions> configure,
        Func<IServiceProvider, IAmazonSQS>? clientFactory = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(configure);
        return Add<THandler>(builder, handlerName, configure, section: null, clientFactory);
    }

    /// <summary>
    /// Adds a hosted <see cref="IdempotentSqsWorker"/> whose options bind from a configuration section (such as
    /// <c>Idempotency:Consumers:orders</c> of appsettings.json), with the handler's <see cref="IdempotencyOptions"/> from
    /// its <c>Handler</c> child; <paramref name="configure"/> runs after binding. Same-name semantics as the other overload.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The idempotency builder.</param>
    /// <param name="handlerName">The handler name.</param>
    /// <param name="section">The consumer's configuration section (<c>QueueUrl</c>, <c>Concurrency</c>, <c>BatchSize</c>..., and <c>Handler</c>).</param>
    /// <param name="configure">Sets options in code after binding (a <see cref="SqsIdempotencyOptions.KeySelector"/>, say).</param>
    /// <param name="clientFactory">Creates the SQS client; defaults to the <see cref="IAmazonSQS"/> registered in the container.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentException">The handler name is not valid.</exception>
    /// <exception cref="InvalidOperationException">The handler name is registered already for another broker.</exception>
    public static IIdempotencyBuilder AddSqsConsumer<THandler>(
        this IIdempotencyBuilder builder,
        string handlerName,
        IConfiguration section,
        Action<SqsIdempotencyOptions>? configure = null,
        Func<IServiceProvider, IAmazonSQS>? clientFactory = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(section);
        return Add<THandler>(builder, handlerName, configure, section, clientFactory);
    }

    private static IIdempotencyBuilder Add<THandler>(IIdempotencyBuilder builder, string handlerName, Action<SqsIdempotencyOptions>? configure, IConfiguration? section, Func<IServiceProvider, IAmazonSQS>? clientFactory)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.TryAddScoped<THandler>();
        if (!ConsumerRegistration.Register(builder, "sqs", handlerName, configure, section))
        {
            return builder;
        }

        builder.Services.AddSingleton<IHostedService>(sp =>
        {
            var worker = new IdempotentSqsWorker(
                clientFactory?.Invoke(sp) ?? sp.GetRequiredService<IAmazonSQS>(),
                sp.CreateIdempotentProcessor<THandler>(handlerName),
                ConsumerRegistration.GetOptions<SqsIdempotencyOptions>(sp, handlerName),
                sp.GetService<ILoggerFactory>()?.CreateLogger($"Idempotency.Sqs.{handlerName}"),
                sp.GetService<TimeProvider>() ?? TimeProvider.System)
            {
                Health = ConsumerRegistration.Heartbeat(sp, $"sqs:{handlerName}"),
            };
            return new IdempotentSqsBackgroundService(worker);
        });
        return builder;
    }
}
