namespace Idempotency.Delivery;

/// <summary>What the <see cref="DeliveryEngine"/> did with one processed message.</summary>
/// <param name="Outcome">Settled, returned to the broker, or to be processed again in place.</param>
/// <param name="AttemptSpent">Whether the result spent a handler attempt (the next processing is the next attempt).</param>
/// <param name="Decision">The decision that was carried out.</param>
public readonly record struct Settlement(SettleOutcome Outcome, bool AttemptSpent, DeliveryDecision Decision);
