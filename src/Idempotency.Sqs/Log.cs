using Microsoft.Extensions.Logging;

namespace Idempotency.Sqs;

/// <summary>Source-generated log messages of the SQS adapter (event ids 4000-4099). Payloads are never logged.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 4000, Level = LogLevel.Information, Message = "SQS worker for handler {Handler} started on {Queue} with {Pollers} pollers (up to {BatchSize} messages per store transaction)")]
    public static partial void Started(ILogger logger, string handler, string queue, int pollers, int batchSize);

    [LoggerMessage(EventId = 4001, Level = LogLevel.Information, Message = "SQS worker for handler {Handler} stopped: {Statistics}")]
    public static partial void Stopped(ILogger logger, string handler, SqsWorkerStatistics statistics);

    [LoggerMessage(EventId = 4002, Level = LogLevel.Warning, Message = "Receive from {Queue} failed; retrying")]
    public static partial void ReceiveFailed(ILogger logger, Exception exception, string queue);

    [LoggerMessage(EventId = 4003, Level = LogLevel.Warning, Message = "Delete of message {MessageId} from {Queue} failed ({Code}: {Reason}); it will come back and be a duplicate")]
    public static partial void DeleteFailed(ILogger logger, string messageId, string queue, string code, string reason);

    [LoggerMessage(EventId = 4004, Level = LogLevel.Warning, Message = "DeleteMessageBatch of {Count} messages on {Queue} failed; they will come back and be duplicates")]
    public static partial void DeleteBatchFailed(ILogger logger, Exception exception, int count, string queue);

    [LoggerMessage(EventId = 4005, Level = LogLevel.Warning, Message = "Visibility change of {Count} messages on {Queue} failed")]
    public static partial void VisibilityChangeFailed(ILogger logger, Exception exception, int count, string queue);

    [LoggerMessage(EventId = 4006, Level = LogLevel.Warning, Message = "Visibility change of message {MessageId} on {Queue} failed ({Code}: {Reason})")]
    public static partial void VisibilityEntryFailed(ILogger logger, string messageId, string queue, string code, string reason);

    [LoggerMessage(EventId = 4007, Level = LogLevel.Warning, Message = "Message {MessageId} dead-lettered from {Queue} to {DeadLetterQueue}: {ReasonCode}")]
    public static partial void DeadLettered(ILogger logger, string messageId, string queue, string deadLetterQueue, string reasonCode);

    [LoggerMessage(EventId = 4008, Level = LogLevel.Error, Message = "Sending message {MessageId} to dead-letter queue {DeadLetterQueue} failed; it stays in {Queue}")]
    public static partial void DeadLetterFailed(ILogger logger, Exception exception, string messageId, string deadLetterQueue, string queue);

    [LoggerMessage(EventId = 4011, Level = LogLevel.Warning, Message = "Key selector threw for message {MessageId} on {Queue}; treating the key as missing")]
    public static partial void KeySelectorFailed(ILogger logger, Exception exception, string messageId, string queue);

    [LoggerMessage(EventId = 4013, Level = LogLevel.Warning, Message = "Message {MessageId} on {Queue} is to be dead-lettered ({ReasonCode}); no DeadLetterQueueUrl is set, so it is left to the queue's RedrivePolicy")]
    public static partial void LeftToRedrive(ILogger logger, string messageId, string queue, string reasonCode);

    [LoggerMessage(EventId = 4014, Level = LogLevel.Information, Message = "Stop requested: {Count} in-flight receives on {Queue} get {Timeout} to finish")]
    public static partial void Draining(ILogger logger, int count, string queue, TimeSpan timeout);

    [LoggerMessage(EventId = 4015, Level = LogLevel.Error, Message = "Unexpected failure handling a receive of {Count} messages on {Queue}; they are released for redelivery")]
    public static partial void BatchCrashed(ILogger logger, Exception exception, int count, string queue);

    [LoggerMessage(EventId = 4016, Level = LogLevel.Warning, Message = "Could not check the queue {Setting} {Queue} at start-up; starting anyway, receives are retried")]
    public static partial void QueueCheckFailed(ILogger logger, Exception exception, string setting, string queue);

    [LoggerMessage(EventId = 4017, Level = LogLevel.Error, Message = "Receiving from {Queue} failed {Count} time(s) in a row; health reports the consumer {State} until a receive succeeds (receives are retried)")]
    public static partial void ReceiveFailing(ILogger logger, Exception exception, string queue, int count, Idempotency.Health.ConsumerState state);

    [LoggerMessage(EventId = 4018, Level = LogLevel.Information, Message = "Receiving from {Queue} works again; the consumer is running")]
    public static partial void ReceiveRecovered(ILogger logger, string queue);
}
