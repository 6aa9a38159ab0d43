namespace Idempotency.Kafka.Transactions;

/// <summary>
/// A handler for the Kafka transactions mode registered through dependency injection
/// (<c>AddKafkaTransactionalProcessor&lt;THandler&gt;</c>): resolved from a fresh scope for each input message, it
/// produces that message's outputs with <see cref="KafkaTransactionContext.Produce"/>.
/// </summary>
public interface IKafkaTransactionalHandler
{
    /// <summary>Transforms one input message; outputs produced through <paramref name="context"/> commit with its offset, or not at all.</summary>
    /// <param name="context">The input and the transaction's producer.</param>
    /// <param name="cancellationToken">Cancelled when the processor stops (the open transaction is then aborted).</param>
    /// <returns>A task that completes when the message is handled; throwing aborts the transaction and retries the batch.</returns>
    ValueTask HandleAsync(KafkaTransactionContext context, CancellationToken cancellationToken);
}
