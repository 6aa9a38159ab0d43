namespace Idempotency.Sqs;

/// <summary>
/// SQS-specific message attributes written on an explicitly dead-lettered message, next to the common
/// <see cref="Idempotency.Delivery.DeadLetterHeaders"/>.
/// </summary>
/// <remarks>
/// SQS allows at most 10 message attributes. A dead-letter keeps, in this order: the original key attribute, the
/// reason code, error type, error message, attempts, handler, source queue, original message id, key, fingerprints,
/// and then as many of the other original attributes as fit.
/// </remarks>
public static class SqsDeadLetterAttributes
{
    /// <summary>The most message attributes SQS accepts on one message.</summary>
    public const int MaxAttributes = 10;

    /// <summary>The URL of the queue the message was received from.</summary>
    public const string SourceQueue = "x-sqs-source-queue";

    /// <summary>The original SQS message id.</summary>
    public const string MessageId = "x-sqs-message-id";
}
