using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Postgres.Retention;

/// <summary>
/// Deletes expired keys in bounded batches with a pause between them, so pruning never holds long locks, never
/// bloats one transaction and leaves room for the consumers. Usable without DI; the hosted service runs it on an interval.
/// </summary>
public sealed partial class PostgresRetentionPruner
{
    private readonly PostgresIdempotencyStore _store;
    private readonly PostgresRetentionOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;

    /// <summary>Creates a pruner.</summary>
    /// <param name="store">The store whose table is pruned.</param>
    /// <param name="options">Batch size and pacing; validated here.</param>
    /// <param name="timeProvider">The clock that decides what expired.</param>
    /// <param name="logger">Optional logger.</param>
    public PostgresRetentionPruner(PostgresIdempotencyStore store, PostgresRetentionOptions options, TimeProvider? timeProvider = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(options);
        var errors = options.GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        _store = store;
        _options = options;
        _time = timeProvider ?? TimeProvider.System;
        _logger = logger ?? NullLogger.Instance;
    }

    /// <summary>Gets the options.</summary>
    public PostgresRetentionOptions Options => _options;

    /// <summary>Runs one pruning pass: batches until fewer rows than a batch expired, or the per-run limit.</summary>
    /// <param name="cancellationToken">Stops between batches.</param>
    /// <returns>How many rows were deleted.</returns>
    public async Task<long> PruneOnceAsync(CancellationToken cancellationToken = default)
    {
        var cutoff = _time.GetUtcNow();
        long total = 0;
        for (var batch = 0; batch < _options.MaxBatchesPerRun; batch++)
        {
            var deleted = await _store.PruneExpiredAsync(_options.BatchSize, maxBatches: 1, cutoff, cancellationToken).ConfigureAwait(false);
            total += deleted;
            if (deleted < _options.BatchSize)
            {
                break;
            }

            if (_options.PauseBetweenBatches > TimeSpan.Zero)
            {
                await Task.Delay(_options.PauseBetweenBatches, _time, cancellationToken).ConfigureAwait(false);
            }
        }

        if (total > 0)
        {
            LogPruned(_logger, total, _store.QualifiedTableName);
        }

        return total;
    }

    [LoggerMessage(EventId = 6000, Level = LogLevel.Information, Message = "Pruned {Count} expired idempotency keys from {Table}")]
    private static partial void LogPruned(ILogger logger, long count, string table);
}
