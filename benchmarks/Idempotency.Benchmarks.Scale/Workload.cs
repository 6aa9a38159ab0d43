using System.Globalization;
using Idempotency;
using Idempotency.Postgres;
using Npgsql;

/// <summary>What every consumer process of every broker does and gets: the same messages, store and business write.</summary>
internal static class Workload
{
    /// <summary>The body of every message.</summary>
    public const string Body = "{\"amount\":5}";

    /// <summary>The keys m0..m(unique-1), every 5th once more (a re-sent copy), shuffled.</summary>
    public static List<string> Sends(int unique)
    {
        var keys = Enumerable.Range(0, unique).Select(i => "m" + i.ToString(CultureInfo.InvariantCulture)).ToList();
        return [.. keys.Concat(keys.Where((_, i) => i % 5 == 0)).OrderBy(_ => Random.Shared.Next())];
    }

    /// <summary>
    /// The processor of a consumer process: the PostgreSQL store in <paramref name="schema"/>, and a handler that
    /// upserts one business row per key in the claim's transaction (applied counts how often it ran for a key).
    /// </summary>
    public static IdempotentProcessor CreateProcessor(NpgsqlDataSource dataSource, string schema) =>
        new(new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema }), IdempotentHandler.Create(async (context, ct) =>
        {
            await using var command = new NpgsqlCommand($"INSERT INTO {schema}.effects (id, applied) VALUES (@id, 1) ON CONFLICT (id) DO UPDATE SET applied = {schema}.effects.applied + 1", context.GetNpgsqlConnection(), context.GetNpgsqlTransaction());
            command.Parameters.AddWithValue("id", context.Key);
            await command.ExecuteNonQueryAsync(ct);
        }), new IdempotencyOptions { HandlerName = "scale" });
}
