using Microsoft.Extensions.Logging;

namespace Idempotency.Delivery;

/// <summary>Source-generated log messages of <see cref="DeliveryEngine"/>.</summary>
internal static partial class EngineLog
{
    [LoggerMessage(EventId = 1110, Level = LogLevel.Information, Message = "Handler {Handler} failed on key {Key} from {Destination} (attempt {Attempt}); trying again in {Delay}")]
    public static partial void Retrying(ILogger logger, string handler, string destination, string key, int attempt, TimeSpan delay);

    [LoggerMessage(EventId = 1111, Level = LogLevel.Warning, Message = "Delivery observer {Observer} of handler {Handler} threw; the message's handling is unaffected")]
    public static partial void ObserverFailed(ILogger logger, Exception exception, string observer, string handler);

    [LoggerMessage(EventId = 1112, Level = LogLevel.Warning, Message = "Stopping {Consumer}: in-flight messages did not settle within {Timeout}; cancelled (rolled back, they will be redelivered, none acknowledged)")]
    public static partial void DrainCut(ILogger logger, string consumer, TimeSpan timeout);
}
