using Microsoft.Extensions.Logging;

namespace Idempotency.Redis;

/// <summary>Source-generated log messages of the Redis stores. Payloads and connection strings are never logged.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 5000, Level = LogLevel.Warning, Message = "Releasing Redis leases of handler {Handler} failed; they expire by themselves")]
    public static partial void ReleaseFailed(ILogger logger, Exception exception, string handler);

    [LoggerMessage(EventId = 5001, Level = LogLevel.Warning, Message = "Marking {Count} keys of handler {Handler} completed in Redis failed after the commit of the source of truth, which still filters their duplicates")]
    public static partial void MarkCompletedFailed(ILogger logger, Exception exception, int count, string handler);

    [LoggerMessage(EventId = 5002, Level = LogLevel.Warning, Message = "Redis is unavailable to the layered store for handler {Handler}; continuing with the source of truth alone")]
    public static partial void RedisLayerUnavailable(ILogger logger, Exception exception, string handler);

    [LoggerMessage(EventId = 5003, Level = LogLevel.Debug, Message = "Key {Key} of handler {Handler} was completed in the source of truth but not marked in Redis; marker restored")]
    public static partial void MarkerRestored(ILogger logger, string key, string handler);

    [LoggerMessage(EventId = 5004, Level = LogLevel.Error, Message = "{Count} Redis commands queued by handler {Handler} failed inside the EXEC that recorded keys {Keys}: {Errors}. Redis does not roll back: the other commands and the keys were applied, so redeliveries are duplicates and these writes are not retried; repair the data")]
    public static partial void HandlerCommandsFailed(ILogger logger, Exception exception, int count, string handler, string keys, string errors);
}
