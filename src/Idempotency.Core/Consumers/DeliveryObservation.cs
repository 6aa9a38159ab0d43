using Idempotency.Delivery;

namespace Idempotency;

/// <summary>What a consumer did with one message, as told to an <see cref="IDeliveryObserver"/>.</summary>
/// <param name="Broker">The broker, as in the metrics: <c>kafka</c>, <c>rabbitmq</c>, <c>aws_sqs</c> (or the name a loop the user keeps gave).</param>
/// <param name="Destination">The topic or queue.</param>
/// <param name="Handler">The handler name.</param>
/// <param name="Key">The idempotency key, when the message had a valid one.</param>
/// <param name="Outcome">The processing outcome (processed, duplicate, failed, store unavailable...).</param>
/// <param name="Action">What was decided: acknowledge, retry, dead-letter, pause, retry later.</param>
/// <param name="Settled">Whether the message is done with (acknowledged or dead-lettered); otherwise it comes back.</param>
/// <param name="Attempt">The 1-based handler attempt that produced the outcome.</param>
/// <param name="ReasonCode">The reason code of a dead-letter or retry (<c>handler_failed</c>, <c>invalid_key</c>...), when there is one.</param>
/// <param name="Error">The handler's or the store's exception, when there was one.</param>
public sealed record DeliveryObservation(
    string Broker,
    string Destination,
    string Handler,
    string? Key,
    ProcessingOutcome Outcome,
    DeliveryAction Action,
    bool Settled,
    int Attempt,
    string? ReasonCode,
    Exception? Error);
