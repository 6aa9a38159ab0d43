using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Text.Json;
using Idempotency.Outbox;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Npgsql;
using NpgsqlTypes;

namespace Idempotency.Postgres.Outbox;

/// <summary>
/// Publishes the outbox rows handlers wrote in their transactions, then marks them sent. Several relays share the work
/// (<c>FOR UPDATE SKIP LOCKED</c>) and still keep per-key order: a row is taken only when no older unsent row of its
/// key is held elsewhere. It wakes on the NOTIFY each commit sends, and polls as a safety net. A crash between
/// publishing and marking publishes the rows again; each carries its stable message id, so the consumer downstream
/// applies it once. Usable without DI: call <see cref="RunAsync"/>; the hosted service does that for you.
/// </summary>
public sealed partial class PostgresOutboxRelay
{
    private static readonly Histogram<double> PublishLag = Idempotency.Diagnostics.IdempotencyTelemetry.Meter.CreateHistogram<double>(
        "idempotency.outbox.publish_lag", "s", "Time from the handler's commit to the broker's confirmation.");

    private static readonly Counter<long> Published = Idempotency.Diagnostics.IdempotencyTelemetry.Meter.CreateCounter<long>(
        "idempotency.outbox.published", "{message}", "Outbox messages published and marked sent.");

    private readonly PostgresIdempotencyStore _store;
    private readonly IOutboxPublisher _publisher;
    private readonly PostgresOutboxRelayOptions _options;
    private readonly TimeProvider _time;
    private readonly ILogger _logger;
    private readonly string _lockSql;
    private readonly string _blockedSql;
    private readonly string _markSql;
    private readonly string _cleanupSql;
    private readonly SemaphoreSlim _wake;

    /// <summary>Creates a relay.</summary>
    /// <param name="store">The store whose outbox table is relayed.</param>
    /// <param name="publisher">Publishes to the broker.</param>
    /// <param name="options">Batch size, polling, backoff, cleanup; validated here.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <param name="logger">Optional logger.</param>
    public PostgresOutboxRelay(PostgresIdempotencyStore store, IOutboxPublisher publisher, PostgresOutboxRelayOptions? options = null, TimeProvider? timeProvider = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(store);
        ArgumentNullException.ThrowIfNull(publisher);
        _options = options ?? new PostgresOutboxRelayOptions();
        var errors = _options.GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        _store = store;
        _publisher = publisher;
        _wake = new SemaphoreSlim(0, _options.Workers);
        _time = timeProvider ?? TimeProvider.System;
        _logger = logger ?? NullLogger.Instance;
        var outbox = store.QualifiedOutboxTableName;

        // SKIP LOCKED lets relays share the table; the NOT EXISTS keeps per-key order across them: a row whose key
        // has an older unsent row outside this batch (held by another relay, or skipped) waits for a later round.
        // Step 1 locks the oldest pending rows nobody else holds (SKIP LOCKED lets relays share the table). Step 2 keeps
        // per-key order across relays: a locked row is published only if no older unsent row of its key exists outside
        // this batch (held by another relay); the others stay locked and unpublished until a later round. Two plain
        // statements rather than one anti-join, so the plan cannot degrade into scanning the whole backlog when the
        // table's statistics are stale (an outbox churns faster than autovacuum analyzes it).
        _lockSql = $"""
            SELECT id, message_id, destination, message_key, payload, headers::text, created_at
            FROM {outbox} WHERE sent_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
            """;
        _blockedSql = $"""
            SELECT message_key, min(id) FROM {outbox}
            WHERE sent_at IS NULL AND message_key = ANY($1) AND id < $2 AND NOT (id = ANY($3))
            GROUP BY message_key
            """;
        // Losing a "sent" mark in a crash only republishes rows the consumer downstream deduplicates, so this
        // transaction does not wait for its WAL flush (one fsync less per batch).
        _markSql = $"UPDATE {outbox} SET sent_at = now() WHERE id = ANY($1)";
        _cleanupSql = $"DELETE FROM {outbox} WHERE id = ANY(ARRAY(SELECT id FROM {outbox} WHERE sent_at < $1 ORDER BY id LIMIT $2))";
    }

    /// <summary>Publishes one batch of pending messages and marks them sent.</summary>
    /// <param name="cancellationToken">Cancels the call; nothing is marked sent unless the publish completed.</param>
    /// <returns>How many messages were published.</returns>
    public async Task<int> RelayOnceAsync(CancellationToken cancellationToken = default)
    {
        var connection = await _store.DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var connectionScope = connection.ConfigureAwait(false);
        var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await using var transactionScope = transaction.ConfigureAwait(false);

        var locked = new List<OutboxRecord>();
        using (var select = new NpgsqlBatch(connection, transaction))
        {
            // Walk the pending index in id order even when statistics claim only a few rows are pending.
            select.BatchCommands.Add(new NpgsqlBatchCommand("SET LOCAL enable_sort TO off"));
            select.BatchCommands.Add(new NpgsqlBatchCommand("SET LOCAL enable_bitmapscan TO off"));
            var lockRows = new NpgsqlBatchCommand(_lockSql);
            lockRows.Parameters.Add(new NpgsqlParameter<int> { TypedValue = _options.BatchSize });
            select.BatchCommands.Add(lockRows);
            using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var headers = reader.IsDBNull(5) ? null : JsonSerializer.Deserialize<Dictionary<string, string>>(reader.GetString(5));
                locked.Add(new OutboxRecord(reader.GetInt64(0), reader.GetGuid(1), reader.GetString(2), reader.GetString(3), reader.GetFieldValue<byte[]>(4), headers, reader.GetFieldValue<DateTimeOffset>(6)));
            }
        }

        var records = locked;
        if (locked.Count > 0)
        {
            var blocked = new Dictionary<string, long>(StringComparer.Ordinal);
            using (var check = new NpgsqlCommand(_blockedSql, connection, transaction))
            {
                check.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = locked.Select(r => r.Key).Distinct(StringComparer.Ordinal).ToArray() });
                check.Parameters.Add(new NpgsqlParameter<long> { TypedValue = locked[^1].Id });
                check.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = locked.Select(r => r.Id).ToArray(), NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Bigint });
                using var reader = await check.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
                while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
                {
                    blocked[reader.GetString(0)] = reader.GetInt64(1);
                }
            }

            if (blocked.Count > 0)
            {
                records = locked.Where(r => !blocked.TryGetValue(r.Key, out var first) || r.Id < first).ToList();
            }
        }

        if (records.Count == 0)
        {
            await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
            return 0;
        }

        // The rows stay locked while publishing, so no other relay publishes them at the same time.
        await _publisher.PublishAsync(records, cancellationToken).ConfigureAwait(false);
        using (var mark = new NpgsqlBatch(connection, transaction))
        {
            mark.BatchCommands.Add(new NpgsqlBatchCommand("SET LOCAL synchronous_commit TO OFF"));
            var update = new NpgsqlBatchCommand(_markSql);
            update.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = records.Select(r => r.Id).ToArray(), NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Bigint });
            mark.BatchCommands.Add(update);
            await mark.ExecuteNonQueryAsync(CancellationToken.None).ConfigureAwait(false);
        }

        await transaction.CommitAsync(CancellationToken.None).ConfigureAwait(false);
        var now = _time.GetUtcNow();
        foreach (var record in records)
        {
            PublishLag.Record(Math.Max(0, (now - record.CreatedAt).TotalSeconds));
        }

        Published.Add(records.Count);
        return records.Count;
    }

    /// <summary>Deletes sent rows older than <see cref="PostgresOutboxRelayOptions.KeepSentFor"/>, a bounded batch per statement.</summary>
    /// <param name="cancellationToken">Stops between batches.</param>
    /// <returns>How many rows were deleted.</returns>
    public async Task<long> CleanupAsync(CancellationToken cancellationToken = default)
    {
        var cutoff = _time.GetUtcNow() - _options.KeepSentFor;
        long total = 0;
        var connection = await _store.DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var connectionScope = connection.ConfigureAwait(false);
        while (true)
        {
            using var delete = new NpgsqlCommand(_cleanupSql, connection);
            delete.Parameters.Add(new NpgsqlParameter<DateTimeOffset> { TypedValue = cutoff, NpgsqlDbType = NpgsqlDbType.TimestampTz });
            delete.Parameters.Add(new NpgsqlParameter<int> { TypedValue = _options.CleanupBatchSize });
            var deleted = await delete.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            total += deleted;
            if (deleted < _options.CleanupBatchSize)
            {
                return total;
            }
        }
    }

    /// <summary>Relays until cancelled: drains pending rows, then sleeps until a commit notifies it or the poll interval passes.</summary>
    /// <param name="cancellationToken">Stops the relay.</param>
    /// <returns>A task that completes when stopped.</returns>
    public async Task RunAsync(CancellationToken cancellationToken)
    {
        using var listening = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var listener = ListenAsync(listening.Token);
        try
        {
            await Task.WhenAll(Enumerable.Range(0, _options.Workers).Select(worker => RunWorkerAsync(cleans: worker == 0, cancellationToken))).ConfigureAwait(false);
        }
        finally
        {
            await listening.CancelAsync().ConfigureAwait(false);
            try
            {
                await listener.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    private async Task RunWorkerAsync(bool cleans, CancellationToken cancellationToken)
    {
        var failures = 0;
        var nextCleanup = _time.GetUtcNow() + _options.CleanupInterval;
        while (!cancellationToken.IsCancellationRequested)
        {
            int published;
            try
            {
                published = await RelayOnceAsync(cancellationToken).ConfigureAwait(false);
                failures = 0;
                if (cleans && _time.GetUtcNow() >= nextCleanup)
                {
                    nextCleanup = _time.GetUtcNow() + _options.CleanupInterval;
                    await CleanupAsync(cancellationToken).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // Broker or database down: nothing was marked sent; back off and try again.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                failures++;
                var delay = _options.FailureBackoff.GetDelay(failures);
                LogRelayFailed(_logger, exception, failures, delay);
                try
                {
                    await Task.Delay(delay, _time, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            if (published >= _options.BatchSize)
            {
                // A full batch: more is likely pending, so wake a sleeping sibling to publish alongside.
                Wake();
                continue;
            }

            // Drained (or only key-blocked rows remain): wait for the next commit's NOTIFY or the poll interval.
            try
            {
                _ = await _wake.WaitAsync(_options.PollInterval, cancellationToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task ListenAsync(CancellationToken cancellationToken)
    {
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                var connection = await _store.DataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
                await using var connectionScope = connection.ConfigureAwait(false);
                connection.Notification += (_, _) => Wake();
                using (var listen = new NpgsqlCommand($"LISTEN {_store.OutboxChannel}", connection))
                {
                    await listen.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
                }

                // A commit may have landed before LISTEN took effect: look once.
                Wake();
                while (!cancellationToken.IsCancellationRequested)
                {
                    await connection.WaitAsync(cancellationToken).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
                return;
            }
#pragma warning disable CA1031 // The listener reconnects; polling covers the gap.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                LogListenFailed(_logger, exception);
                try
                {
                    await Task.Delay(_options.PollInterval, _time, cancellationToken).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    private void Wake()
    {
        try
        {
            _wake.Release();
        }
        catch (SemaphoreFullException)
        {
            // Already awake.
        }
    }

    [LoggerMessage(EventId = 6100, Level = LogLevel.Warning, Message = "Outbox relay failed ({Failures} in a row); nothing was marked sent, retrying in {Delay}")]
    private static partial void LogRelayFailed(ILogger logger, Exception exception, int failures, TimeSpan delay);

    [LoggerMessage(EventId = 6101, Level = LogLevel.Warning, Message = "Outbox relay lost its LISTEN connection; polling until it reconnects")]
    private static partial void LogListenFailed(ILogger logger, Exception exception);
}
