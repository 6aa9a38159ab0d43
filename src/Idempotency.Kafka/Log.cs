using Confluent.Kafka;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka;

/// <summary>Source-generated log messages of the Kafka adapter. Payloads and connection strings are never logged.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 2000, Level = LogLevel.Information, Message = "Partitions assigned: {Partitions}")]
    public static partial void Assigned(ILogger logger, string partitions);

    [LoggerMessage(EventId = 2001, Level = LogLevel.Information, Message = "Partitions revoked: {Partitions}; in-flight work finished or cancelled, completed offsets committed")]
    public static partial void Revoked(ILogger logger, string partitions);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Warning, Message = "Partitions lost: {Partitions}; in-flight work cancelled, nothing committed")]
    public static partial void Lost(ILogger logger, string partitions);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Warning, Message = "Offset commit failed ({Code}); it is retried with later offsets")]
    public static partial void CommitFailed(ILogger logger, Exception exception, ErrorCode code);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Warning, Message = "Consume error on {Partition}: {Reason}")]
    public static partial void ConsumeError(ILogger logger, string partition, string reason);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Warning, Message = "Message {Partition}@{Offset} dead-lettered to {DeadLetterTopic} ({ReasonCode}) after {Attempts} attempt(s)")]
    public static partial void DeadLettered(ILogger logger, string partition, long offset, string deadLetterTopic, string reasonCode, int attempts);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Warning, Message = "Dead-letter produce to {DeadLetterTopic} failed; retrying (the source offset is not committed until it succeeds)")]
    public static partial void DeadLetterFailed(ILogger logger, Exception exception, string deadLetterTopic);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Warning, Message = "Store unavailable: partition {Partition} paused until the store answers")]
    public static partial void PausedForStore(ILogger logger, string partition);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Information, Message = "Store answers again: partition {Partition} resumed")]
    public static partial void ResumedAfterStore(ILogger logger, string partition);

    [LoggerMessage(EventId = 2010, Level = LogLevel.Information, Message = "Kafka idempotent consumer stopped; final offsets committed: {Committed}")]
    public static partial void Stopped(ILogger logger, bool committed);

    [LoggerMessage(EventId = 2011, Level = LogLevel.Warning, Message = "Key selector threw for {Partition}@{Offset}; the message is treated as having no key")]
    public static partial void KeySelectorFailed(ILogger logger, Exception exception, string partition, long offset);

    [LoggerMessage(EventId = 2012, Level = LogLevel.Warning, Message = "Body selector threw for {Partition}@{Offset}; the message is dead-lettered as unreadable")]
    public static partial void BodySelectorFailed(ILogger logger, Exception exception, string partition, long offset);

    [LoggerMessage(EventId = 2013, Level = LogLevel.Error, Message = "Fatal consumer error; the consume loop stops")]
    public static partial void Fatal(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 2014, Level = LogLevel.Information, Message = "Starting {Partition} at offset {Offset} from the store's position (the group's committed offset was {Committed})")]
    public static partial void SeekToStoredPosition(ILogger logger, string partition, long offset, long committed);

    [LoggerMessage(EventId = 2015, Level = LogLevel.Warning, Message = "Could not read the stored positions of {Partitions}; starting from the group's committed offsets (re-read messages are skipped as duplicates)")]
    public static partial void StoredPositionsUnavailable(ILogger logger, Exception exception, string partitions);

    [LoggerMessage(EventId = 2016, Level = LogLevel.Critical, Message = "The worker of {Partition} failed unexpectedly; the consume loop stops so the failure is not a silent stall (its messages are not committed and will be redelivered)")]
    public static partial void WorkerFailed(ILogger logger, Exception exception, string partition);
}
