using Idempotency.Storage;
using Npgsql;

namespace Idempotency.Postgres;

/// <summary>The store's SQL, built once from validated identifiers.</summary>
internal sealed class PostgresSql
{
    public PostgresSql(PostgresIdempotencyStoreOptions options)
    {
        var table = $"{options.Schema}.{options.Table}";
        var outbox = $"{options.Schema}.{options.OutboxTable}";
        QualifiedTable = table;
        QualifiedOutbox = outbox;
        Schema = options.Schema;
        Table = options.Table;
        PrepareStatements = options.PrepareStatements;

        // Claims write completed_at already: the row is invisible until the commit, so the commit needs no second write
        // of the key row (that UPDATE halved batch throughput and cost a single message 10-15 %). Only a handler's stored
        // result is written again at the commit.
        //
        // A new key (the common case) is one plain insert. No row inserted means the key exists: committed before, or by a
        // transaction this insert waited on, which a new statement (SelectOne) sees. Folding that read into the insert
        // (a CTE with UNION ALL) saved duplicates a round trip but cost every new message ~10 % of throughput; replays,
        // where duplicates dominate, look keys up before claiming anyway.
        ClaimOne = $"""
            INSERT INTO {table} (handler_name, idempotency_key, fingerprint, expires_at, completed_at)
            VALUES ($1, $2, $3, $4, clock_timestamp())
            ON CONFLICT DO NOTHING
            """;

        SelectOne = $"SELECT fingerprint, result FROM {table} WHERE handler_name = $1 AND idempotency_key = $2";

        // Rows are inserted in array order (the caller sorts keys), so concurrent batches lock in one order. A batch of
        // new keys (the common case) is this one insert, which returns the keys it took; only keys it did not take are
        // read, in a second statement (SelectMany), which also sees rows committed by transactions the insert waited on.
        // Folding that read into the insert (a CTE joining the input, the inserted and the existing rows) cost the
        // server about a sixth more per batch of new keys.
        ClaimMany = $"""
            INSERT INTO {table} (handler_name, idempotency_key, fingerprint, expires_at, completed_at)
            SELECT $1, k, f, $4, clock_timestamp() FROM unnest($2::text[], $3::bytea[]) WITH ORDINALITY AS u(k, f, n) ORDER BY n
            ON CONFLICT DO NOTHING
            RETURNING idempotency_key
            """;

        SelectMany = $"SELECT idempotency_key, fingerprint, result FROM {table} WHERE handler_name = $1 AND idempotency_key = ANY($2)";

        // ClaimTiming.AtCommit: the key arrives with the commit, already completed. No ON CONFLICT: a key committed
        // first by another transaction must fail this statement, which turns the COMMIT behind it into a rollback.
        InsertCompleted = $"""
            INSERT INTO {table} (handler_name, idempotency_key, fingerprint, expires_at, completed_at, duration_ms, result)
            VALUES ($1, $2, $3, $4, clock_timestamp(), $5, $6)
            """;

        CompleteOne = $"UPDATE {table} SET completed_at = clock_timestamp(), duration_ms = $3, result = $4 WHERE handler_name = $1 AND idempotency_key = $2";

        CompleteMany = $"""
            UPDATE {table} t SET completed_at = clock_timestamp(), duration_ms = u.d, result = u.r
            FROM unnest($2::text[], $3::float8[], $4::bytea[]) AS u(k, d, r)
            WHERE t.idempotency_key = ANY($2::text[]) AND t.handler_name = $1 AND t.idempotency_key = u.k
            """;

        InsertOutbox = $"""
            INSERT INTO {outbox} (destination, message_key, payload, headers)
            SELECT d, k, p, h::jsonb FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[]) WITH ORDINALITY AS u(d, k, p, h, n) ORDER BY n
            """;

        NotifyOutbox = $"SELECT pg_notify('{OutboxChannelFor(options)}', '')";
        Positions = new PostgresConsumerPositions(options);
    }

    public PostgresConsumerPositions Positions { get; }

    /// <summary>Whether the store's statements are prepared (<see cref="PostgresIdempotencyStoreOptions.PrepareStatements"/>).</summary>
    public bool PrepareStatements { get; }

    /// <summary>
    /// Prepares a command when enabled. Npgsql keeps prepared statements per physical connection across pool returns
    /// and looks them up by SQL text, so after the first use on a connection this sends nothing.
    /// </summary>
    public Task PrepareAsync(NpgsqlCommand command, CancellationToken cancellationToken) =>
        PrepareStatements ? command.PrepareAsync(cancellationToken) : Task.CompletedTask;

    /// <inheritdoc cref="PrepareAsync(NpgsqlCommand, CancellationToken)"/>
    public Task PrepareAsync(NpgsqlBatch batch, CancellationToken cancellationToken) =>
        PrepareStatements ? batch.PrepareAsync(cancellationToken) : Task.CompletedTask;

    /// <summary>A committed row as a claim's answer: its fingerprint at <paramref name="ordinal"/>, its stored result next.</summary>
    public static ClaimResult ReadProcessed(NpgsqlDataReader reader, int ordinal) =>
        new(ClaimStatus.AlreadyProcessed, reader.GetFieldValue<byte[]>(ordinal), reader.IsDBNull(ordinal + 1) ? null : reader.GetFieldValue<byte[]>(ordinal + 1));

    /// <summary>Reads the committed rows of some keys of one handler (<see cref="SelectMany"/>), by key.</summary>
    /// <param name="connection">An open connection.</param>
    /// <param name="transaction">The transaction to read in, or <see langword="null"/> for none.</param>
    /// <param name="handler">The handler name.</param>
    /// <param name="keys">The keys.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    public async Task<Dictionary<string, ClaimResult>> ReadProcessedAsync(NpgsqlConnection connection, NpgsqlTransaction? transaction, string handler, string[] keys, CancellationToken cancellationToken)
    {
        var byKey = new Dictionary<string, ClaimResult>(keys.Length, StringComparer.Ordinal);
        using var select = new NpgsqlCommand(SelectMany, connection, transaction);
        select.Parameters.Add(new NpgsqlParameter<string> { TypedValue = handler });
        select.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = keys });
        await PrepareAsync(select, cancellationToken).ConfigureAwait(false);
        using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            byKey[reader.GetString(0)] = ReadProcessed(reader, 1);
        }

        return byKey;
    }

    public string QualifiedTable { get; }

    public string Schema { get; }

    public string Table { get; }

    public string InsertCompleted { get; }

    /// <summary>The NOTIFY channel: lower case, because an unquoted LISTEN folds the name to lower case.</summary>
    public static string OutboxChannelFor(PostgresIdempotencyStoreOptions options) =>
        $"{options.Schema}_{options.OutboxTable}".ToLowerInvariant();

    public string QualifiedOutbox { get; }

    public string ClaimOne { get; }

    public string SelectOne { get; }

    public string ClaimMany { get; }

    public string SelectMany { get; }

    public string CompleteOne { get; }

    public string CompleteMany { get; }

    public string InsertOutbox { get; }

    public string NotifyOutbox { get; }
}
