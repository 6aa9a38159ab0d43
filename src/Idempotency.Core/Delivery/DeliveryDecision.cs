namespace Idempotency.Delivery;

/// <summary>An adapter's instruction for one processed message.</summary>
/// <param name="Action">What to do.</param>
/// <param name="Delay">How long to wait first, for retries and pauses.</param>
/// <param name="ReasonCode">A short code for dead-letters and metrics: <c>handler_failed</c>, <c>invalid_key</c>, <c>payload_mismatch</c>.</param>
/// <param name="Reason">A readable reason for dead-letter headers; never contains the payload.</param>
public readonly record struct DeliveryDecision(DeliveryAction Action, TimeSpan Delay = default, string? ReasonCode = null, string? Reason = null);
