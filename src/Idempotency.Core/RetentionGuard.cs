using Microsoft.Extensions.Logging;

namespace Idempotency;

/// <summary>Checks a handler's retention against how long its broker can still redeliver a message.</summary>
/// <remarks>
/// A key pruned before the broker gives up on its message lets a very late redelivery through as new. Adapters call
/// this at start-up with what they can read from the broker (Kafka topic <c>retention.ms</c>, SQS
/// <c>MessageRetentionPeriod</c>). The retention compared is the one the store applies: its
/// <see cref="Storage.IIdempotencyStore.EnforcedRetention"/> when it has one of its own, else the handler's.
/// </remarks>
internal static partial class RetentionGuard
{
    /// <summary>Returns a warning when the retention is shorter than the broker's redelivery horizon.</summary>
    /// <param name="options">The handler's options.</param>
    /// <param name="redeliveryHorizon">How long the broker may still deliver a message, or <see langword="null"/> when unbounded or unknown.</param>
    /// <param name="source">Where the horizon was read, e.g. <c>topic orders retention.ms</c>.</param>
    /// <param name="store">The handler's store, whose own retention, if it has one, is the one compared.</param>
    /// <returns>The warning, or <see langword="null"/> when the retention covers the horizon.</returns>
    public static string? Check(IdempotencyOptions options, TimeSpan? redeliveryHorizon, string source, Storage.IIdempotencyStore? store = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var enforced = store?.EnforcedRetention;
        var retention = enforced ?? options.Retention;
        if (redeliveryHorizon is not { } horizon || retention >= horizon)
        {
            return null;
        }

        return enforced is null
            ? $"Handler '{options.HandlerName}' keeps keys for {retention}, but {source} allows redelivery for {horizon}: " +
              "a message redelivered after its key expired would run again. Raise Retention to at least the broker's horizon."
            : $"Handler '{options.HandlerName}' keeps keys for {retention}, the retention of the {store!.Name} store (its own option, not IdempotencyOptions.Retention), " +
              $"but {source} allows redelivery for {horizon}: a message redelivered after its key expired would run again. Raise the {store.Name} store's retention to at least the broker's horizon.";
    }

    /// <summary>Logs the warning of <see cref="Check"/> when there is one.</summary>
    /// <param name="logger">The logger.</param>
    /// <param name="options">The handler's options.</param>
    /// <param name="redeliveryHorizon">The broker's redelivery horizon, if known.</param>
    /// <param name="source">Where it was read.</param>
    /// <param name="store">The handler's store (see <see cref="Check"/>).</param>
    /// <returns><see langword="true"/> when a warning was logged.</returns>
    public static bool WarnIfTooShort(ILogger logger, IdempotencyOptions options, TimeSpan? redeliveryHorizon, string source, Storage.IIdempotencyStore? store = null)
    {
        ArgumentNullException.ThrowIfNull(logger);
        var warning = Check(options, redeliveryHorizon, source, store);
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
