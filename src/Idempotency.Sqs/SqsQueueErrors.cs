using System.Net;
using Amazon.SQS;
using Amazon.SQS.Model;

namespace Idempotency.Sqs;

/// <summary>Tells SQS errors that retrying cannot fix (the queue does not exist, access is denied) from the rest.</summary>
internal static class SqsQueueErrors
{
    /// <summary>Returns whether the error means the queue is misconfigured: it does not exist, or the credentials may not use it.</summary>
    /// <param name="exception">The SQS error.</param>
    /// <returns><see langword="true"/> for a missing queue or a denied access.</returns>
    public static bool IsMisconfiguration(AmazonSQSException exception) => IsMissingQueue(exception) || IsAccessDenied(exception);

    /// <summary>Describes the error for a log or a start-up failure, such as "does not exist (QueueDoesNotExist)".</summary>
    /// <param name="exception">The SQS error.</param>
    /// <returns>The description.</returns>
    public static string Describe(AmazonSQSException exception) =>
        IsMissingQueue(exception) ? $"does not exist ({exception.ErrorCode}: {exception.Message})"
        : IsAccessDenied(exception) ? $"may not be used with these credentials ({exception.ErrorCode}: {exception.Message})"
        : $"failed ({exception.ErrorCode}: {exception.Message})";

    /// <summary>Returns whether the error says the queue does not exist.</summary>
    /// <param name="exception">The SQS error.</param>
    /// <returns><see langword="true"/> for a missing queue (the JSON protocol's QueueDoesNotExist, or the query protocol's and older emulators' legacy code).</returns>
    public static bool IsMissingQueue(AmazonSQSException exception) =>
        exception is QueueDoesNotExistException
        || exception.ErrorCode is "QueueDoesNotExist" or "AWS.SimpleQueueService.NonExistentQueue";

    private static bool IsAccessDenied(AmazonSQSException exception) =>
        exception.ErrorCode is "AccessDenied" or "AccessDeniedException"
        || (exception.StatusCode == HttpStatusCode.Forbidden && exception.ErrorCode is not ("ThrottlingException" or "RequestThrottled"));
}
