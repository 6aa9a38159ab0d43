using Amazon.SQS;
using Idempotency;
using Idempotency.Health;
using Idempotency.Sqs;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers idempotent SQS consumers as hosted services.</summary>
public static class SqsIdempotencyBuilderExtensions
{
    /// <summary>
    /// Adds a hosted <see cref="IdempotentSqsWorker"/> that consumes one queue with <typeparamref name="THandler"/>
    /// (resolved from a fresh scope per message or batch). Options are named after the handler and validated at start-up.
    /// Calling it again with the same handler name only adds configuration; it never adds a second worker.
    /// </summary>
    /// <typeparam name="THandler">The handler; registered as scoped unless already registered.</typeparam>
    /// <param name="builder">The idempotency builder.</param>
    /// <param name="handlerName">The handler name (scopes keys; names the options of <see cref="IdempotencyOptions"/> and <see cref="SqsIdempotencyOptions"/>).</param>
    /// <param name="configure">Sets the worker's options (at least <see cref="SqsIdempotencyOptions.QueueUrl"/>).</param>
    /// <param name="clientFactory">Creates the SQS client; defaults to the <see cref="IAmazonSQS"/> registered in the container.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder AddSqsConsumer<THandler>(
        this IIdempotencyBuilder builder,
        string handlerName,
        Action<SqsIdempotencyOptions> configure,
        Func<IServiceProvider, IAmazonSQS>? clientFactory = null)
        where THandler : class, IIdempotentMessageHandler
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentNullException.ThrowIfNull(configure);
        var services = builder.Services;
        services.AddOptions<IdempotencyOptions>(handlerName).Configure(options => options.HandlerName = handlerName).ValidateOnStart();
        services.AddOptions<SqsIdempotencyOptions>(handlerName).Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<SqsIdempotencyOptions>, SqsOptionsValidator>());
        services.TryAddScoped<THandler>();
        if (services.Any(d => d.ServiceType == typeof(SqsConsumerMarker) && Equals(d.ServiceKey, handlerName)))
        {
            return builder;
        }

        services.AddKeyedSingleton(handlerName, new SqsConsumerMarker());
        services.AddSingleton<IHostedService>(sp =>
        {
            var time = sp.GetService<TimeProvider>() ?? TimeProvider.System;
            var sqs = clientFactory?.Invoke(sp) ?? sp.GetRequiredService<IAmazonSQS>();
            var worker = new IdempotentSqsWorker(
                sqs,
                sp.CreateIdempotentProcessor<THandler>(handlerName),
                sp.GetRequiredService<IOptionsMonitor<SqsIdempotencyOptions>>().Get(handlerName),
                sp.GetService<ILoggerFactory>()?.CreateLogger($"Idempotency.Sqs.{handlerName}"),
                time)
            {
                Health = sp.GetService<ConsumerHealthRegistry>()?.Register($"sqs:{handlerName}", time),
            };
            return new IdempotentSqsBackgroundService(worker);
        });
        return builder;
    }

    private sealed class SqsConsumerMarker;

    private sealed class SqsOptionsValidator : IValidateOptions<SqsIdempotencyOptions>
    {
        public ValidateOptionsResult Validate(string? name, SqsIdempotencyOptions options)
        {
            var errors = options.GetValidationErrors();
            return errors.Count == 0
                ? ValidateOptionsResult.Success
                : ValidateOptionsResult.Fail(errors.Select(error => $"SQS consumer '{name}': {error}"));
        }
    }
}
