using Microsoft.Extensions.Hosting;

namespace Idempotency.Kafka.Transactions;

/// <summary>
/// Hosts a <see cref="KafkaTransactionalProcessor"/> as a <see cref="BackgroundService"/>: the processor is created when
/// the host starts (its <c>InitTransactions</c> fences a previous incarnation with the same transactional id) and stopped
/// when the host stops (an open transaction is aborted; its batch is read again by the next owner). A fatal error — this
/// instance fenced by another one with the same transactional id — ends the service with that exception, which by
/// default stops the host. Usable without dependency injection:
/// <c>new KafkaTransactionalProcessorService(() =&gt; new KafkaTransactionalProcessor(...))</c>.
/// </summary>
public sealed class KafkaTransactionalProcessorService : BackgroundService
{
    private readonly Func<KafkaTransactionalProcessor> _factory;

    /// <summary>Creates the service.</summary>
    /// <param name="factory">Creates the processor when the service starts; the service disposes it when it stops.</param>
    public KafkaTransactionalProcessorService(Func<KafkaTransactionalProcessor> factory)
    {
        ArgumentNullException.ThrowIfNull(factory);
        _factory = factory;
    }

    /// <inheritdoc/>
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var processor = _factory();
        await processor.RunAsync(stoppingToken).ConfigureAwait(false);
    }
}
