using System.Text.Json;
using Idempotency.Outbox;
using Idempotency.Storage;
using Npgsql;
using NpgsqlTypes;

namespace Idempotency.Postgres;

/// <summary>
/// A PostgreSQL store transaction. Handlers write through <see cref="Connection"/> and <see cref="Transaction"/>
/// (or <c>context.GetNpgsqlTransaction()</c>) so their writes commit or roll back with the key.
/// </summary>
public sealed class PostgresIdempotencyTransaction : IDeferredClaimTransaction
{
    private readonly PostgresSql _sql;
    private bool _finished;

    internal PostgresIdempotencyTransaction(NpgsqlConnection connection, NpgsqlTransaction transaction, PostgresSql sql)
    {
        Connection = connection;
        Transaction = transaction;
        _sql = sql;
    }

    /// <summary>Gets the open connection the handler must write through.</summary>
    public NpgsqlConnection Connection { get; }

    /// <inheritdoc/>
    public bool IsBroken => Connection.FullState is System.Data.ConnectionState.Closed || Connection.FullState.HasFlag(System.Data.ConnectionState.Broken);

    /// <summary>Gets the open transaction the handler's commands must join.</summary>
    public NpgsqlTransaction Transaction { get; }

    /// <inheritdoc/>
    public async ValueTask<ClaimResult> ClaimAsync(ClaimRequest request, CancellationToken cancellationToken = default)
    {
        using (var command = new NpgsqlCommand(_sql.ClaimOne, Connection, Transaction))
        {
            AddClaimParameters(command.Parameters, request);
            await _sql.PrepareAsync(command, cancellationToken).ConfigureAwait(false);

            // One row inserted: the key is ours. A row count, not a returned row, so nothing is read back.
            if (await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false) == 1)
            {
                return ClaimResult.Claimed;
            }
        }

        // The key exists (committed before, or by a transaction the insert waited on): read it in a new statement.
        return await ReadCommittedAsync(request, Transaction, "conflicted", cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public async ValueTask<IReadOnlyList<ClaimResult>> ClaimBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(requests);
        if (requests.Count == 0)
        {
            return [];
        }

        var handler = requests[0].HandlerName;
        var keys = new string[requests.Count];
        var fingerprints = new byte[requests.Count][];
        for (var i = 0; i < requests.Count; i++)
        {
            if (!string.Equals(requests[i].HandlerName, handler, StringComparison.Ordinal))
            {
                throw new ArgumentException("A batch claims keys of one handler only.", nameof(requests));
            }

            keys[i] = requests[i].Key;
            fingerprints[i] = ByteArrays.AsArray(requests[i].Fingerprint);
        }

        // The insert returns the keys it took; a batch of new keys (the common case) needs nothing more.
        var taken = new HashSet<string>(keys.Length, StringComparer.Ordinal);
        using (var command = new NpgsqlCommand(_sql.ClaimMany, Connection, Transaction))
        {
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = handler });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = keys });
            command.Parameters.Add(new NpgsqlParameter<byte[][]> { TypedValue = fingerprints, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Bytea });
            command.Parameters.Add(new NpgsqlParameter<DateTimeOffset> { TypedValue = requests[0].ExpiresAt });
            await _sql.PrepareAsync(command, cancellationToken).ConfigureAwait(false);
            using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                taken.Add(reader.GetString(0));
            }
        }

        var results = new ClaimResult[requests.Count];
        List<int>? existing = null;
        for (var i = 0; i < keys.Length; i++)
        {
            if (taken.Contains(keys[i]))
            {
                results[i] = ClaimResult.Claimed;
            }
            else
            {
                (existing ??= []).Add(i);
            }
        }

        if (existing is not null)
        {
            await ReadExistingAsync(handler, keys, existing, results, cancellationToken).ConfigureAwait(false);
        }

        return results;
    }

    /// <inheritdoc/>
    public async ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(completions);
        ArgumentNullException.ThrowIfNull(outbox);

        // Completion, outbox rows and the commit travel in one round trip.
        // The claim wrote completed_at; only a stored result needs the key row written again.
        using var batch = new NpgsqlBatch(Connection, Transaction);
        if (completions.Count == 1 && completions[0].Result is not null)
        {
            var completion = completions[0];
            var command = new NpgsqlBatchCommand(_sql.CompleteOne);
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = completion.Claim.HandlerName });
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = completion.Claim.Key });
            AddCompletionParameters(command.Parameters, completion);
            batch.BatchCommands.Add(command);
        }
        else if (completions.Count > 1 && CountResults(completions) is var withResults and > 0)
        {
            var keys = new string[withResults];
            var durations = new double[withResults];
            var results = new byte[]?[withResults];
            var next = 0;
            foreach (var completion in completions)
            {
                if (completion.Result is { } result)
                {
                    keys[next] = completion.Claim.Key;
                    durations[next] = completion.Duration.TotalMilliseconds;
                    results[next++] = result.ToArray();
                }
            }

            var command = new NpgsqlBatchCommand(_sql.CompleteMany);
            command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = completions[0].Claim.HandlerName });
            command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = keys });
            command.Parameters.Add(new NpgsqlParameter<double[]> { TypedValue = durations });
            command.Parameters.Add(new NpgsqlParameter { Value = results, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Bytea });
            batch.BatchCommands.Add(command);
        }

        AddCommit(batch, completions, outbox);
        await _sql.PrepareAsync(batch, cancellationToken).ConfigureAwait(false);
        _finished = true;
        await batch.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public async ValueTask<ClaimResult> ClaimAndCommitAsync(CompletionRecord completion, IReadOnlyList<OutboxMessage> outbox, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(outbox);
        var claim = completion.Claim;

        // Key, outbox rows and COMMIT in one round trip: with the handler's own statement that makes two per message.
        using var batch = new NpgsqlBatch(Connection, Transaction);
        var insert = new NpgsqlBatchCommand(_sql.InsertCompleted);
        AddClaimParameters(insert.Parameters, claim);
        AddCompletionParameters(insert.Parameters, completion);
        batch.BatchCommands.Add(insert);
        AddCommit(batch, [completion], outbox);
        try
        {
            await _sql.PrepareAsync(batch, cancellationToken).ConfigureAwait(false);
            await batch.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            _finished = true;
            return ClaimResult.Claimed;
        }
        catch (PostgresException exception) when (IsKeyConflict(exception))
        {
            // Another transaction committed this key first: the COMMIT was skipped, so undo the handler's writes too.
            await RollbackAsync(cancellationToken).ConfigureAwait(false);
            return await ReadCommittedAsync(claim, transaction: null, "conflicted at commit", cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc/>
    public async ValueTask RollbackAsync(CancellationToken cancellationToken = default)
    {
        if (_finished)
        {
            return;
        }

        _finished = true;
        if (Connection.FullState == System.Data.ConnectionState.Open)
        {
            await Transaction.RollbackAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        // Disposing an uncommitted NpgsqlTransaction rolls it back; returning the connection to the pool resets it.
        await Transaction.DisposeAsync().ConfigureAwait(false);
        await Connection.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Ends a commit batch: outbox rows, consumer positions, then COMMIT, all in the batch's one round trip.</summary>
    private void AddCommit(NpgsqlBatch batch, IReadOnlyList<CompletionRecord> completions, IReadOnlyList<OutboxMessage> outbox)
    {
        if (outbox.Count > 0)
        {
            AddOutbox(batch, outbox);
        }

        // Consumer positions (offsets kept in the store) commit with the effects; see PostgresConsumerPositions.
        _sql.Positions.AddTo(batch, completions);

        // PostgreSQL answers COMMIT in an aborted transaction (a handler that caught its own error and went on) with
        // ROLLBACK and no error. Some statement must go first so that such a transaction fails here instead of being
        // reported committed; "SELECT 1" is refused in an aborted transaction.
        if (batch.BatchCommands.Count == 0)
        {
            batch.BatchCommands.Add(new NpgsqlBatchCommand("SELECT 1"));
        }

        // Npgsql tracks the server's transaction status, so the NpgsqlTransaction knows it is complete afterwards.
        batch.BatchCommands.Add(new NpgsqlBatchCommand("COMMIT"));
    }

    private static void AddCompletionParameters(NpgsqlParameterCollection parameters, CompletionRecord completion)
    {
        parameters.Add(new NpgsqlParameter<double> { TypedValue = completion.Duration.TotalMilliseconds });
        parameters.Add(new NpgsqlParameter { Value = completion.Result is { } result ? result.ToArray() : DBNull.Value, NpgsqlDbType = NpgsqlDbType.Bytea });
    }

    private void AddOutbox(NpgsqlBatch batch, IReadOnlyList<OutboxMessage> outbox)
    {
        var destinations = new string[outbox.Count];
        var keys = new string[outbox.Count];
        var payloads = new byte[outbox.Count][];
        var headers = new string?[outbox.Count];
        for (var i = 0; i < outbox.Count; i++)
        {
            destinations[i] = outbox[i].Destination;
            keys[i] = outbox[i].Key;
            payloads[i] = outbox[i].Payload.ToArray();
            headers[i] = outbox[i].Headers is { Count: > 0 } h ? JsonSerializer.Serialize(h) : null;
        }

        var insert = new NpgsqlBatchCommand(_sql.InsertOutbox);
        insert.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = destinations });
        insert.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = keys });
        insert.Parameters.Add(new NpgsqlParameter<byte[][]> { TypedValue = payloads, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Bytea });
        insert.Parameters.Add(new NpgsqlParameter { Value = headers, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Text });
        batch.BatchCommands.Add(insert);

        // NOTIFY is delivered only on commit, so a relay wakes exactly when the rows are visible.
        batch.BatchCommands.Add(new NpgsqlBatchCommand(_sql.NotifyOutbox));
    }

    /// <summary>Reads the committed row of a key whose insert conflicted; a missing row (pruned meanwhile) is an error.</summary>
    private async ValueTask<ClaimResult> ReadCommittedAsync(ClaimRequest request, NpgsqlTransaction? transaction, string conflict, CancellationToken cancellationToken)
    {
        using var select = new NpgsqlCommand(_sql.SelectOne, Connection, transaction);
        select.Parameters.Add(new NpgsqlParameter<string> { TypedValue = request.HandlerName });
        select.Parameters.Add(new NpgsqlParameter<string> { TypedValue = request.Key });
        await _sql.PrepareAsync(select, cancellationToken).ConfigureAwait(false);
        using var reader = await select.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        return await reader.ReadAsync(cancellationToken).ConfigureAwait(false)
            ? PostgresSql.ReadProcessed(reader, 0)
            : throw new InvalidOperationException($"Key '{request.Key}' {conflict} but no committed row was found; was it pruned concurrently?");
    }

    /// <summary>
    /// Reads the committed rows of the keys a batch insert did not take: committed before, or by a transaction the insert
    /// waited on (this new statement sees it). A key with no row was pruned meanwhile: an error, as for one message.
    /// </summary>
    private async ValueTask ReadExistingAsync(string handler, string[] keys, List<int> existing, ClaimResult[] results, CancellationToken cancellationToken)
    {
        var existingKeys = existing.Select(i => keys[i]).ToArray();
        var byKey = await _sql.ReadProcessedAsync(Connection, Transaction, handler, existingKeys, cancellationToken).ConfigureAwait(false);
        foreach (var index in existing)
        {
            results[index] = byKey.TryGetValue(keys[index], out var found)
                ? found
                : throw new InvalidOperationException($"Key '{keys[index]}' conflicted but no committed row was found; was it pruned concurrently?");
        }
    }

    private static int CountResults(IReadOnlyList<CompletionRecord> completions)
    {
        var count = 0;
        foreach (var completion in completions)
        {
            if (completion.Result is not null)
            {
                count++;
            }
        }

        return count;
    }

    private bool IsKeyConflict(PostgresException exception) =>
        exception.SqlState == PostgresErrorCodes.UniqueViolation
        && string.Equals(exception.TableName, _sql.Table, StringComparison.OrdinalIgnoreCase)
        && string.Equals(exception.SchemaName, _sql.Schema, StringComparison.OrdinalIgnoreCase);

    private static void AddClaimParameters(NpgsqlParameterCollection parameters, ClaimRequest request)
    {
        parameters.Add(new NpgsqlParameter<string> { TypedValue = request.HandlerName });
        parameters.Add(new NpgsqlParameter<string> { TypedValue = request.Key });
        parameters.Add(new NpgsqlParameter<byte[]> { TypedValue = ByteArrays.AsArray(request.Fingerprint) });
        // A DateTimeOffset is written as timestamptz by default; naming the type would cost a type look-up by name per
        // statement.
        parameters.Add(new NpgsqlParameter<DateTimeOffset> { TypedValue = request.ExpiresAt });
    }

}
