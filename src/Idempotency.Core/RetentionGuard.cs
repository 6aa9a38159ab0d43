using Microsoft.Extensions.Logging;

namespace Idempotency;

/// <summary>Checks a handler's retention against how long its broker can still redeliver a message.</summary>
/// <remarks>
/// A key pruned before the broker gives up on its message lets a very late redelivery through as new. Adapters call
/// this at start-up with what they can read from the broker (Kafka topic <c>retention.ms</c>, SQS
/// <c>MessageRetentionPeriod</c>).
/// </remarks>
internal static partial class RetentionGuard
{
    /// <summary>Returns a warning when the retention is shorter than the broker's redelivery horizon.</summary>
    /// <param name="options">The handler's options.</param>
    /// <param name="redeliveryHorizon">How long the broker may still deliver a message, or <see langword="null"/> when unbounded or unknown.</param>
    /// <param name="source">Where the horizon was read, e.g. <c>topic orders retention.ms</c>.</param>
    /// <returns>The warning, or <see langword="null"/> when the retention covers the horizon.</returns>
    public static string? Check(IdempotencyOptions options, TimeSpan? redeliveryHorizon, string source)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (redeliveryHorizon is not { } horizon || options.Retention >= horizon)
        {
            return null;
        }

        return $"Handler '{options.HandlerName}' keeps keys for {options.Retention}, but {source} allows redelivery for {horizon}: " +
               "a message redelivered after its key expired would run again. Raise Retention to at least the broker's horizon.";
    }

    /// <summary>Logs the warning of <see cref="Check"/> when there is one.</summary>
    /// <param name="logger">The logger.</param>
    /// <param name="options">The handler's options.</param>
    /// <param name="redeliveryHorizon">The broker's redelivery horizon, if known.</param>
    /// <param name="source">Where it was read.</param>
    /// <returns><see langword="true"/> when a warning was logged.</returns>
    public static bool WarnIfTooShort(ILogger logger, IdempotencyOptions options, TimeSpan? redeliveryHorizon, string source)
    {
        ArgumentNullException.ThrowIfNull(logger);
        var warning = Check(options, redeliveryHorizon, source);
        if (warning is null)
        {
            return false;
        }

        LogRetentionTooShort(logger, warning);
        return true;
    }

    [LoggerMessage(EventId = 1100, Level = LogLevel.Warning, Message = "{Warning}")]
    private static partial void LogRetentionTooShort(ILogger logger, string warning);
}
