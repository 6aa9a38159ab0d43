using Microsoft.Extensions.Logging;

namespace Idempotency.Delivery;

/// <summary>Source-generated log messages of <see cref="StoreGate"/>.</summary>
internal static partial class StoreGateLog
{
    [LoggerMessage(EventId = 1101, Level = LogLevel.Warning, Message = "Consumer {Consumer} paused: the {Store} store is unreachable ({Problem}); nothing is acknowledged or dead-lettered until it answers")]
    public static partial void Paused(ILogger logger, string consumer, string store, string problem);

    [LoggerMessage(EventId = 1102, Level = LogLevel.Critical, Message = "Consumer {Consumer} stopped taking messages: the {Store} store is misconfigured: {Problem}. Nothing is dead-lettered or counted as an attempt; it resumes by itself once fixed")]
    public static partial void Misconfigured(ILogger logger, string consumer, string store, string problem);

    [LoggerMessage(EventId = 1103, Level = LogLevel.Information, Message = "Consumer {Consumer} resumed: the {Store} store answers and is set up")]
    public static partial void Resumed(ILogger logger, string consumer, string store);
}
