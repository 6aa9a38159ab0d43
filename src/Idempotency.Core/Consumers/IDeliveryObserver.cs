namespace Idempotency;

/// <summary>
/// Told about every message a consumer settled or gave back (the same hook on Kafka, RabbitMQ and SQS): for audit logs,
/// custom metrics or tests. Register one in the container (<c>services.AddSingleton&lt;IDeliveryObserver, MyObserver&gt;()</c>)
/// or add it to <see cref="IdempotentConsumerOptions.Observers"/>.
/// </summary>
/// <remarks>Called on the consumer's hot path after the broker action; keep it fast and non-blocking. An exception it throws is logged and ignored.</remarks>
public interface IDeliveryObserver
{
    /// <summary>Called once the consumer carried out its decision for one message.</summary>
    /// <param name="delivery">What happened.</param>
    void OnDelivered(DeliveryObservation delivery);
}
