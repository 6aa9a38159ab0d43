using Microsoft.Extensions.Logging;

namespace Idempotency.Delivery;

/// <summary>Source-generated log messages of <see cref="DeliveryEngine"/>.</summary>
internal static partial class EngineLog
{
    [LoggerMessage(EventId = 1110, Level = LogLevel.Information, Message = "Handler {Handler} failed on key {Key} from {Destination} (attempt {Attempt}); trying again in {Delay}")]
    public static partial void Retrying(ILogger logger, string handler, string destination, string key, int attempt, TimeSpan delay);
}
