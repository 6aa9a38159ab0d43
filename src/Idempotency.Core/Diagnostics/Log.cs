using Microsoft.Extensions.Logging;

namespace Idempotency.Diagnostics;

/// <summary>Source-generated log messages of the Core pipeline. Payloads and connection strings are never logged.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 1000, Level = LogLevel.Debug, Message = "Duplicate of key {Key} for handler {Handler} skipped ({Cause})")]
    public static partial void DuplicateSkipped(ILogger logger, string key, string handler, string cause);

    [LoggerMessage(EventId = 1001, Level = LogLevel.Warning, Message = "Key {Key} for handler {Handler} arrived with a different payload (stored {StoredFingerprint}, new {NewFingerprint}); policy {Policy}")]
    public static partial void PayloadMismatch(ILogger logger, string key, string handler, string storedFingerprint, string newFingerprint, PayloadMismatchPolicy policy);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Warning, Message = "Handler {Handler} failed for key {Key}; nothing was committed")]
    public static partial void HandlerFailed(ILogger logger, Exception exception, string handler, string key);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Warning, Message = "Idempotency store {Store} is unavailable while handling key {Key}; nothing was committed")]
    public static partial void StoreUnavailable(ILogger logger, Exception exception, string store, string key);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Warning, Message = "Message on {Destination} rejected for handler {Handler}: {Reason}")]
    public static partial void InvalidKey(ILogger logger, string destination, string handler, string reason);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Debug, Message = "Key {Key} for handler {Handler} is held by another worker; will retry")]
    public static partial void HeldByAnother(ILogger logger, string key, string handler);

    [LoggerMessage(EventId = 1006, Level = LogLevel.Information, Message = "Batch of {Count} for handler {Handler}: a handler failed, redoing the batch without key {Key}")]
    public static partial void BatchRedo(ILogger logger, int count, string handler, string key);

    [LoggerMessage(EventId = 1008, Level = LogLevel.Warning, Message = "Batch of {Count} for handler {Handler} failed outside a handler; processing its messages one at a time")]
    public static partial void BatchFailed(ILogger logger, Exception exception, int count, string handler);

    [LoggerMessage(EventId = 1009, Level = LogLevel.Error, Message = "Idempotency store {Store} is misconfigured while handling key {Key} for handler {Handler}: {Problem}; nothing was committed, the message is not blamed")]
    public static partial void StoreMisconfigured(ILogger logger, Exception exception, string store, string key, string handler, string problem);

    [LoggerMessage(EventId = 1010, Level = LogLevel.Warning, Message = "Lease on key {Key} for handler {Handler} expired and another worker took the key over before this commit: the handler's effects outside the transaction ran but were not recorded")]
    public static partial void LeaseLost(ILogger logger, string key, string handler);

    [LoggerMessage(EventId = 1011, Level = LogLevel.Warning, Message = "The store refused the writes of handler {Handler} for key {Key} at commit: {Problem}")]
    public static partial void WriteRejected(ILogger logger, Exception exception, string handler, string key, string problem);

    [LoggerMessage(EventId = 1012, Level = LogLevel.Warning, Message = "Operator asked to forget key {Key} for handler {Handler} in store {Store}; a completed record was deleted: {Forgotten}. A redelivery of that key runs the handler again")]
    public static partial void KeyForgotten(ILogger logger, string key, string handler, string store, bool forgotten);
}
