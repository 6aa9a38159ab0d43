using Microsoft.Extensions.Hosting;

namespace Idempotency.Kafka;

/// <summary>
/// Hosts an <see cref="IdempotentKafkaConsumer{TKey, TValue}"/> as a <see cref="BackgroundService"/>: the consumer is
/// created when the host starts and shut down gracefully (in-flight finished, completed offsets committed) when it stops.
/// Usable without dependency injection: <c>new KafkaIdempotentConsumerService&lt;K, V&gt;(() =&gt; IdempotentKafkaConsumer&lt;K, V&gt;.Create(...))</c>.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
public sealed class KafkaIdempotentConsumerService<TKey, TValue> : BackgroundService
{
    private readonly Func<IdempotentKafkaConsumer<TKey, TValue>> _factory;

    /// <summary>Creates the service.</summary>
    /// <param name="factory">Creates the consumer when the service starts; the service disposes it when it stops.</param>
    public KafkaIdempotentConsumerService(Func<IdempotentKafkaConsumer<TKey, TValue>> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        _factory = factory;
    }

    /// <inheritdoc/>
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var consumer = _factory();
        await using (consumer.ConfigureAwait(false))
        {
            await consumer.RunAsync(stoppingToken).ConfigureAwait(false);
        }
    }
}
