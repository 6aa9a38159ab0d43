using System.Net.Sockets;
using System.Reflection;
using Dapper;
using Idempotency.Storage;
using Npgsql;

namespace Idempotency.Postgres;

/// <summary>
/// The PostgreSQL store: the key claim (<c>INSERT ... ON CONFLICT DO NOTHING</c>), the handler's own writes and the
/// completion record commit in one transaction. A concurrent duplicate waits on the primary key until the first
/// transaction ends, then sees Duplicate (or claims the key if the first rolled back).
/// </summary>
public sealed class PostgresIdempotencyStore : IDeferredClaimStore, IConsumerPositionStore, IIdempotencyKeyAdmin, IAsyncDisposable
{
    private readonly NpgsqlDataSource _dataSource;
    private readonly bool _ownsDataSource;
    private readonly PostgresSql _sql;

    /// <summary>Creates the store over a data source the caller owns (and may share with its own code).</summary>
    /// <param name="dataSource">The Npgsql data source.</param>
    /// <param name="options">Table names; validated here.</param>
    /// <exception cref="ArgumentException">A table or schema name is not a plain identifier.</exception>
    public PostgresIdempotencyStore(NpgsqlDataSource dataSource, PostgresIdempotencyStoreOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(dataSource);
        Options = options ?? new PostgresIdempotencyStoreOptions();
        Options.Validate(requireConnectionString: false);
        _dataSource = dataSource;
        _sql = new PostgresSql(Options);
    }

    /// <summary>Creates the store with its own data source built from <see cref="PostgresIdempotencyStoreOptions.ConnectionString"/>.</summary>
    /// <param name="options">The connection string and table names; validated here.</param>
    /// <exception cref="ArgumentException">An option is invalid.</exception>
    public PostgresIdempotencyStore(PostgresIdempotencyStoreOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate(requireConnectionString: true);
        Options = options;
        _dataSource = NpgsqlDataSource.Create(options.ConnectionString!);
        _ownsDataSource = true;
        _sql = new PostgresSql(Options);
    }

    /// <inheritdoc/>
    public string Name => "postgres";

    /// <summary>Gets the options.</summary>
    public PostgresIdempotencyStoreOptions Options { get; }

    /// <summary>Gets the data source the store opens its connections from.</summary>
    public NpgsqlDataSource DataSource => _dataSource;

    /// <summary>Gets the schema-qualified name of the processed-keys table.</summary>
    public string QualifiedTableName => _sql.QualifiedTable;

    /// <summary>Gets the schema-qualified name of the outbox table.</summary>
    public string QualifiedOutboxTableName => _sql.QualifiedOutbox;

    /// <summary>Gets the LISTEN/NOTIFY channel a commit with outbox messages notifies.</summary>
    public string OutboxChannel => PostgresSql.OutboxChannelFor(Options);

    /// <summary>Returns the schema script with this store's names filled in, for teams that run their own migrations.</summary>
    /// <returns>The SQL script, ready to run (idempotent: every statement is <c>IF NOT EXISTS</c>).</returns>
    /// <seealso cref="GetSchemaScript(PostgresIdempotencyStoreOptions?)"/>
    public string GetSchemaScript() => GetSchemaScript(Options);

    /// <summary>
    /// Returns the ready-to-run schema script (schema, processed-keys, outbox and consumer-position tables and their indexes)
    /// for the given names, without a database or a store: print it once and put it into your migrations.
    /// </summary>
    /// <param name="options">The schema and table names; <see langword="null"/> for the defaults. The connection string is not needed.</param>
    /// <returns>The SQL script; every statement is <c>IF NOT EXISTS</c>, so running it twice is harmless.</returns>
    /// <exception cref="ArgumentException">A schema or table name is not a plain identifier.</exception>
    /// <example>
    /// A .NET 10 file-based app that prints it (<c>dotnet run schema.cs &gt; schema.sql</c>):
    /// <code>
    /// #:package Idempotency.Postgres@0.1.0
    /// System.Console.Write(Idempotency.Postgres.PostgresIdempotencyStore.GetSchemaScript(new() { Schema = "billing" }));
    /// </code>
    /// </example>
    public static string GetSchemaScript(PostgresIdempotencyStoreOptions? options)
    {
        options ??= new PostgresIdempotencyStoreOptions();
        options.Validate(requireConnectionString: false);
        using var stream = typeof(PostgresIdempotencyStore).Assembly.GetManifestResourceStream("Idempotency.Postgres.schema.sql")
            ?? throw new InvalidOperationException("The embedded schema script is missing.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd()
            .Replace("{schema}", options.Schema, StringComparison.Ordinal)
            .Replace("{table}", options.Table, StringComparison.Ordinal)
            .Replace("{outbox_table}", options.OutboxTable, StringComparison.Ordinal)
            .Replace("{positions_table}", options.ConsumerPositionsTable, StringComparison.Ordinal);
    }

    /// <summary>Creates the schema, tables and indexes if they do not exist. Call it once at start-up (or run the script yourself).</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the schema exists.</returns>
    public async Task EnsureSchemaAsync(CancellationToken cancellationToken = default)
    {
        var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var connectionScope = connection.ConfigureAwait(false);
        var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
        await using var transactionScope = transaction.ConfigureAwait(false);

        // Several instances starting together must not race on CREATE ... IF NOT EXISTS.
        await connection.ExecuteAsync(new CommandDefinition("SELECT pg_advisory_xact_lock(hashtext('idempotency-schema'))", transaction: transaction, cancellationToken: cancellationToken)).ConfigureAwait(false);
        await connection.ExecuteAsync(new CommandDefinition(GetSchemaScript(), transaction: transaction, cancellationToken: cancellationToken)).ConfigureAwait(false);
        await transaction.CommitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public async ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        NpgsqlConnection? connection = null;
        try
        {
            connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);

            // Npgsql sends BEGIN together with the first command, so this costs no round trip.
            var transaction = await connection.BeginTransactionAsync(cancellationToken).ConfigureAwait(false);
            return new PostgresIdempotencyTransaction(connection, transaction, _sql);
        }
        catch (Exception exception) when (exception is not OperationCanceledException && IsUnavailable(exception))
        {
            if (connection is not null)
            {
                await connection.DisposeAsync().ConfigureAwait(false);
            }

            throw new IdempotencyStoreUnavailableException("Could not open a PostgreSQL connection for the idempotency store.", exception);
        }
    }

    /// <inheritdoc/>
    public async ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default)
    {
        var found = await FindProcessedBatchAsync([request], cancellationToken).ConfigureAwait(false);
        return found[0];
    }

    /// <inheritdoc/>
    public async ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(requests);
        var results = new ClaimResult?[requests.Count];
        if (requests.Count == 0)
        {
            return results;
        }

        try
        {
            var handler = requests[0].HandlerName;
            var keys = new string[requests.Count];
            for (var i = 0; i < keys.Length; i++)
            {
                keys[i] = string.Equals(requests[i].HandlerName, handler, StringComparison.Ordinal)
                    ? requests[i].Key
                    : throw new ArgumentException("A look-up reads keys of one handler only.", nameof(requests));
            }

            // No transaction: a pooled connection, one round trip, nothing to roll back for a duplicate.
            var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            await using var connectionScope = connection.ConfigureAwait(false);
            var byKey = await _sql.ReadProcessedAsync(connection, transaction: null, handler, keys, cancellationToken).ConfigureAwait(false);
            for (var i = 0; i < keys.Length; i++)
            {
                results[i] = byKey.TryGetValue(keys[i], out var found) ? found : null;
            }

            return results;
        }
        catch (Exception exception) when (exception is not OperationCanceledException && IsUnavailable(exception))
        {
            throw new IdempotencyStoreUnavailableException("Could not look up keys in the PostgreSQL idempotency store.", exception);
        }
    }

    /// <summary>
    /// The longest key this store holds, in UTF-8 bytes: a btree index entry holds at most about 2,700 bytes, and the
    /// primary key's entry is the key plus the handler name (at most 200 bytes).
    /// </summary>
    public const int KeyByteLimit = 2048;

    /// <inheritdoc/>
    public int MaxKeyBytes => KeyByteLimit;

    /// <inheritdoc/>
    public StoreFailure ClassifyFailure(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is PostgresException postgres)
            {
                return Classify(postgres);
            }
        }

        return StoreFailure.Outage(exception);
    }

    private StoreFailure Classify(PostgresException error)
    {
        var state = error.SqlState;
        string? problem = state switch
        {
            _ when state.StartsWith("28", StringComparison.Ordinal) =>
                $"authentication failed ({state}: {error.MessageText}): check the user name and password of the store's connection string",
            "3D000" => $"the database does not exist ({error.MessageText}): check the store's connection string",
            "3F000" or "42P01" =>
                $"table {QualifiedTableName} does not exist ({state}: {error.MessageText}): call ApplyPostgresSchemaOnStart() or run the script from GetSchemaScript()",
            "42703" or "42883" =>
                $"the schema of {QualifiedTableName} is not the one this version expects ({state}: {error.MessageText}): run the script from GetSchemaScript() again",
            "42501" => $"permission denied ({error.MessageText}): grant the store's user SELECT, INSERT, UPDATE and DELETE on {QualifiedTableName} and USAGE on schema {Options.Schema}",
            _ => null,
        };
        if (problem is not null)
        {
            return new StoreFailure(StoreFailureKind.Misconfiguration, problem);
        }

        // Integrity (23) and data (22) errors at commit come from the handler's own writes (deferred constraints), and
        // 25P02 from a handler that caught its own statement's error and went on in the aborted transaction: the
        // pipeline blames the handler for them only when the handler ran in this transaction.
        return state.StartsWith("23", StringComparison.Ordinal) || state.StartsWith("22", StringComparison.Ordinal) || state == PostgresErrorCodes.InFailedSqlTransaction
            ? new StoreFailure(StoreFailureKind.WriteRejected, $"{state}: {error.MessageText}")
            : new StoreFailure(StoreFailureKind.Outage, $"{state}: {error.MessageText}");
    }

    /// <inheritdoc/>
    public async ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            await using var connectionScope = connection.ConfigureAwait(false);

            // A server that takes no writes (a standby, a failover still in progress, default_transaction_read_only) answers
            // every read and plan below but fails every claim (25006): not ready, or the gate would open only to close again.
            using (var readOnly = new NpgsqlCommand("SELECT current_setting('transaction_read_only') = 'on'", connection))
            {
                if (await readOnly.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false) is true)
                {
                    return new StoreFailure(StoreFailureKind.Outage, "the server accepts no writes (transaction_read_only is on: a standby, or default_transaction_read_only)");
                }
            }

            // Reads and writes nothing: a read over every column the store uses, and the plans (EXPLAIN, which checks
            // privileges but executes nothing) of the claim's insert and the completion's update, so a missing table or
            // column, or a role allowed to read the keys but not to write them, fails here as it would in a claim.
            using var command = new NpgsqlCommand(
                $"""
                SELECT handler_name, idempotency_key, fingerprint, completed_at, duration_ms, expires_at, result FROM {QualifiedTableName} WHERE false;
                EXPLAIN INSERT INTO {QualifiedTableName} (handler_name, idempotency_key, fingerprint, expires_at, completed_at, duration_ms, result)
                    VALUES (NULL, NULL, NULL, NULL, NULL, NULL, NULL) ON CONFLICT DO NOTHING;
                EXPLAIN UPDATE {QualifiedTableName} SET completed_at = NULL, duration_ms = NULL, result = NULL WHERE false;
                """,
                connection);
            await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            return null;
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            return ClassifyFailure(exception);
        }
    }

    /// <inheritdoc/>
    public bool IsUnavailable(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            switch (current)
            {
                case IdempotencyStoreUnavailableException:
                    return true;
                case PostgresException postgres:
                    // Connection (08), shutdown (57P01-03), resource (53) and lock/serialization (40) failures pass by themselves.
                    return postgres.IsTransient;
                case NpgsqlException:
                    // A client-side NpgsqlException is an I/O failure: connection refused, broken or timed out.
                    return true;
                case SocketException or TimeoutException:
                    return true;
            }
        }

        return false;
    }

    /// <inheritdoc/>
    /// <exception cref="IdempotencyStoreUnavailableException">The store cannot be reached.</exception>
    public async ValueTask<IReadOnlyDictionary<int, long>> LoadPositionsAsync(string group, string stream, IReadOnlyCollection<int> partitions, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(group);
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentNullException.ThrowIfNull(partitions);
        try
        {
            return await _sql.Positions.LoadAsync(_dataSource, group, stream, partitions, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OperationCanceledException && IsUnavailable(exception))
        {
            throw new IdempotencyStoreUnavailableException("Could not read consumer positions from PostgreSQL.", exception);
        }
    }

    /// <inheritdoc/>
    public async ValueTask<bool> PingAsync(CancellationToken cancellationToken = default)
    {
        try
        {
            var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            await using var connectionScope = connection.ConfigureAwait(false);
            using var command = new NpgsqlCommand("SELECT 1", connection);
            await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false);
            return true;
        }
#pragma warning disable CA1031 // A ping answers whether the store answers: any failure is a no.
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
#pragma warning restore CA1031
        {
            return false;
        }
    }

    /// <inheritdoc/>
    /// <remarks>
    /// The SQL equivalent: <c>DELETE FROM idempotency.processed_messages WHERE idempotency_key = 'k' AND handler_name = 'h';</c>
    /// (with your schema and table). A claim not yet committed is invisible to it and stays. Prefer
    /// <see cref="IdempotencyStoreOperations.ForgetKeyAsync"/>, which logs and counts the action.
    /// </remarks>
    public async ValueTask<bool> ForgetKeyAsync(string handlerName, string key, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(handlerName);
        ArgumentException.ThrowIfNullOrEmpty(key);
        try
        {
            var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
            await using var connectionScope = connection.ConfigureAwait(false);
            var deleted = await connection.ExecuteAsync(new CommandDefinition(
                $"DELETE FROM {_sql.QualifiedTable} WHERE idempotency_key = @key AND handler_name = @handlerName",
                new { key, handlerName },
                cancellationToken: cancellationToken)).ConfigureAwait(false);
            return deleted > 0;
        }
        catch (Exception exception) when (exception is not OperationCanceledException && IsUnavailable(exception))
        {
            throw new IdempotencyStoreUnavailableException("The PostgreSQL idempotency store could not be reached to forget a key.", exception);
        }
    }

    /// <summary>Deletes expired records in bounded batches, so pruning never holds long locks or bloats one transaction.</summary>
    /// <param name="batchSize">Rows deleted per transaction.</param>
    /// <param name="maxBatches">Upper bound on batches in this call.</param>
    /// <param name="now">The cut-off: records that expired before it are deleted.</param>
    /// <param name="cancellationToken">Cancels between batches.</param>
    /// <returns>How many rows were deleted.</returns>
    public async Task<long> PruneExpiredAsync(int batchSize, int maxBatches, DateTimeOffset now, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batchSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatches, 1);
        var sql = $"""
            DELETE FROM {_sql.QualifiedTable} WHERE ctid = ANY(ARRAY(
                SELECT ctid FROM {_sql.QualifiedTable} WHERE expires_at < @now
                ORDER BY expires_at LIMIT @batchSize FOR UPDATE SKIP LOCKED))
            """;
        long total = 0;
        var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var connectionScope = connection.ConfigureAwait(false);
        for (var i = 0; i < maxBatches; i++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var deleted = await connection.ExecuteAsync(new CommandDefinition(sql, new { now, batchSize }, cancellationToken: cancellationToken)).ConfigureAwait(false);
            total += deleted;
            if (deleted < batchSize)
            {
                break;
            }
        }

        return total;
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (_ownsDataSource)
        {
            await _dataSource.DisposeAsync().ConfigureAwait(false);
        }
    }
}
