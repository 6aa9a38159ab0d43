using System.Collections.Concurrent;
using System.Diagnostics;
using Npgsql;
using NpgsqlTypes;

namespace Idempotency.Benchmarks;

/// <summary>
/// The PostgreSQL ceilings of issue #3, measured by the aggregator when the Kafka benchmark (which measures the same
/// ones) is not part of the run: a single-row insert-on-conflict + update transaction from 1, 4 and 16 connections,
/// and a 100-key batched transaction from 4 connections.
/// </summary>
internal static class PostgresCeilings
{
    private const int Accounts = 100_000;

    public static async Task<List<SummaryRow>> MeasureAsync(TimeSpan duration)
    {
        var cs = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? "Host=127.0.0.1;Port=5432;Username=app;Password=app;Database=appdb";
        await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(cs) { MaxPoolSize = 32 }.ConnectionString);
        var schema = "bench_ceil_" + Guid.NewGuid().ToString("N")[..8];
        await ExecAsync(dataSource, $"CREATE SCHEMA {schema}; CREATE TABLE {schema}.keys (key text PRIMARY KEY); CREATE TABLE {schema}.accounts (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0); INSERT INTO {schema}.accounts (id) SELECT generate_series(0, {Accounts - 1})");
        var rows = new List<SummaryRow>();
        try
        {
            foreach (var connections in new[] { 1, 4, 16 })
            {
                rows.Add(await RunAsync(dataSource, $"PostgreSQL single-row insert-on-conflict + update tx, {connections} conn", connections, 1, duration, schema));
            }

            rows.Add(await RunAsync(dataSource, "PostgreSQL 100-key batched insert-on-conflict + update tx, 4 conn", 4, 100, duration, schema));
        }
        finally
        {
            await ExecAsync(dataSource, $"DROP SCHEMA {schema} CASCADE");
        }

        return rows;
    }

    private static async Task<SummaryRow> RunAsync(NpgsqlDataSource dataSource, string name, int connections, int keysPerTx, TimeSpan duration, string schema)
    {
        var latencies = new ConcurrentBag<double>();
        long done = 0;
        var stopAt = Stopwatch.GetTimestamp() + (long)(duration.TotalSeconds * Stopwatch.Frequency);
        var started = Stopwatch.GetTimestamp();
        var prefix = Guid.NewGuid().ToString("N")[..6];
        await Task.WhenAll(Enumerable.Range(0, connections).Select(w => Task.Run(async () =>
        {
            await using var conn = await dataSource.OpenConnectionAsync();
            for (var n = 0; Stopwatch.GetTimestamp() < stopAt; n++)
            {
                var keys = Enumerable.Range(0, keysPerTx).Select(i => $"{prefix}-{w}-{n}-{i:D3}").Order(StringComparer.Ordinal).ToArray();
                var ids = keys.Select(k => (int)((uint)k.GetHashCode(StringComparison.Ordinal) % Accounts)).Order().ToArray();
                var t0 = Stopwatch.GetTimestamp();
                await using (var tx = await conn.BeginTransactionAsync())
                {
                    await using var batch = new NpgsqlBatch(conn, tx);
                    if (keysPerTx == 1)
                    {
                        batch.BatchCommands.Add(Command($"INSERT INTO {schema}.keys (key) VALUES ($1) ON CONFLICT DO NOTHING", new NpgsqlParameter<string> { TypedValue = keys[0] }));
                        batch.BatchCommands.Add(Command($"UPDATE {schema}.accounts SET balance = balance + 1 WHERE id = $1", new NpgsqlParameter<int> { TypedValue = ids[0] }));
                    }
                    else
                    {
                        batch.BatchCommands.Add(Command($"INSERT INTO {schema}.keys (key) SELECT k FROM unnest($1) AS k ORDER BY k ON CONFLICT DO NOTHING", new NpgsqlParameter { Value = keys, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Text }));
                        batch.BatchCommands.Add(Command($"UPDATE {schema}.accounts a SET balance = a.balance + s.n FROM (SELECT id, count(*) AS n FROM unnest($1) AS id GROUP BY id ORDER BY id) s WHERE a.id = s.id", new NpgsqlParameter { Value = ids, NpgsqlDbType = NpgsqlDbType.Array | NpgsqlDbType.Integer }));
                    }

                    await batch.ExecuteNonQueryAsync();
                    await tx.CommitAsync();
                }

                latencies.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
                Interlocked.Add(ref done, keysPerTx);
            }
        })));
        var elapsed = Stopwatch.GetElapsedTime(started);
        var sorted = latencies.Order().ToArray();
        double P(double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
        var row = new SummaryRow
        {
            Source = "aggregator",
            Broker = "-",
            Store = "postgres",
            Scenario = name,
            Kind = "ceiling",
            MessagesPerSecond = Math.Round(done / elapsed.TotalSeconds),
            P50Ms = Math.Round(P(0.5), 2),
            P99Ms = Math.Round(P(0.99), 2),
            PeakWorkingSetMiB = Process.GetCurrentProcess().PeakWorkingSet64 / 1048576.0,
            LatencyNote = "one transaction",
        };
        Console.WriteLine($"  {name}: {row.MessagesPerSecond:N0} keys/s p50 {row.P50Ms} ms p99 {row.P99Ms} ms");
        return row;
    }

    private static NpgsqlBatchCommand Command(string sql, NpgsqlParameter parameter)
    {
        var command = new NpgsqlBatchCommand(sql);
        command.Parameters.Add(parameter);
        return command;
    }

    private static async Task ExecAsync(NpgsqlDataSource dataSource, string sql)
    {
        await using var command = dataSource.CreateCommand(sql);
        await command.ExecuteNonQueryAsync();
    }
}
