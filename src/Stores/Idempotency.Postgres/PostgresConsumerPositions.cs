using Idempotency.Storage;
using Npgsql;
using NpgsqlTypes;

namespace Idempotency.Postgres;

/// <summary>
/// Consumer positions kept in the store (<see cref="IConsumerPositionStore"/>): the completions' positions are upserted
/// in the commit's own round trip, keeping per group, stream and partition the greatest offset.
/// </summary>
internal sealed class PostgresConsumerPositions
{
    private readonly string _upsert;
    private readonly string _select;

    public PostgresConsumerPositions(PostgresIdempotencyStoreOptions options)
    {
        var table = $"{options.Schema}.{options.ConsumerPositionsTable}";

        // Rows in a stable (group, stream, partition) order, so two transactions touching the same partitions (old and
        // new owner during a rebalance) lock them in one order; GREATEST keeps a late commit from moving a position back.
        _upsert = $"""
            INSERT INTO {table} AS t (group_id, stream, partition_id, offset_value)
            SELECT g, s, p, max(o) FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[]) AS u(g, s, p, o)
            GROUP BY g, s, p ORDER BY g, s, p
            ON CONFLICT (group_id, stream, partition_id)
            DO UPDATE SET offset_value = GREATEST(t.offset_value, excluded.offset_value), updated_at = now()
            """;
        _select = $"SELECT partition_id, offset_value FROM {table} WHERE group_id = $1 AND stream = $2 AND partition_id = ANY($3)";
    }

    /// <summary>Adds the upsert of the completions' positions to the commit batch; nothing when none carries one.</summary>
    public void AddTo(NpgsqlBatch batch, IReadOnlyList<CompletionRecord> completions)
    {
        List<ConsumerPosition>? positions = null;
        foreach (var completion in completions)
        {
            if (completion.Position is { } position)
            {
                (positions ??= []).Add(position);
            }
        }

        if (positions is null)
        {
            return;
        }

        var command = new NpgsqlBatchCommand(_upsert);
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = positions.Select(p => p.Group).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = positions.Select(p => p.Stream).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = positions.Select(p => p.Partition).ToArray() });
        command.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = positions.Select(p => p.Offset).ToArray(), NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Bigint });
        batch.BatchCommands.Add(command);
    }

    /// <summary>Reads the stored positions.</summary>
    public async ValueTask<IReadOnlyDictionary<int, long>> LoadAsync(NpgsqlDataSource dataSource, string group, string stream, IReadOnlyCollection<int> partitions, CancellationToken cancellationToken)
    {
        var result = new Dictionary<int, long>();
        if (partitions.Count == 0)
        {
            return result;
        }

        var connection = await dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using var connectionScope = connection.ConfigureAwait(false);
        using var command = new NpgsqlCommand(_select, connection);
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = group });
        command.Parameters.Add(new NpgsqlParameter<string> { TypedValue = stream });
        command.Parameters.Add(new NpgsqlParameter<int[]> { TypedValue = partitions.ToArray() });
        using var reader = await command.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            result[reader.GetInt32(0)] = reader.GetInt64(1);
        }

        return result;
    }
}
