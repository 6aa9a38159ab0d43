namespace Idempotency.Delivery;

/// <summary>What became of a message the <see cref="DeliveryEngine"/> settled.</summary>
public enum SettleOutcome
{
    /// <summary>Acknowledged or dead-lettered: done.</summary>
    Settled = 0,

    /// <summary>Given back to the broker, which delivers it again.</summary>
    Returned = 1,

    /// <summary>Not settled and kept in its lane (<see cref="IDeliveryPort{TDelivery}.RetriesInPlace"/>): process it again now; the wait is over.</summary>
    ProcessAgain = 2,
}
