using System.Collections.Concurrent;
using System.Diagnostics;
using Npgsql;

namespace Idempotency.Benchmarks.Shared;

/// <summary>
/// The one place every scenario is measured from: a business table whose deferred constraint trigger stamps each
/// effect with <c>clock_timestamp()</c> when its transaction commits (the trigger runs at COMMIT, after the last
/// statement), into an unlogged side table. Throughput, latency and the effects check are all read from there.
/// </summary>
internal sealed class CommitClock(NpgsqlDataSource dataSource, string schema)
{
    public async Task ExecAsync(string sql)
    {
        await using var conn = await dataSource.OpenConnectionAsync();
        await using var command = new NpgsqlCommand(sql, conn);
        await command.ExecuteNonQueryAsync();
    }

    /// <summary>Creates a business table with its commit stamps; with <paramref name="notify"/> each commit also sends a NOTIFY (low-load runs wait on it).</summary>
    public async Task<string> BusinessTableAsync(bool notify)
    {
        var name = "accounts_" + Guid.NewGuid().ToString("N")[..8];
        var table = $"{schema}.{name}";
        var notifySql = notify ? $"PERFORM pg_notify('{Channel(table)}', NEW.id);" : "";
        await ExecAsync($"""
            CREATE TABLE {table} (id text PRIMARY KEY, amount bigint NOT NULL DEFAULT 0, applied int NOT NULL DEFAULT 0);
            CREATE UNLOGGED TABLE {table}_commits (id text NOT NULL, tx bigint NOT NULL, at timestamptz NOT NULL);
            CREATE FUNCTION {table}_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO {table}_commits VALUES (NEW.id, txid_current(), clock_timestamp());
                {notifySql}
                RETURN NULL;
            END $$;
            CREATE CONSTRAINT TRIGGER {name}_stamp AFTER INSERT OR UPDATE ON {table}
                DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {table}_stamp();
            """);
        return table;
    }

    public async Task<string> KeyTableAsync()
    {
        var table = $"{schema}.keys_{Guid.NewGuid().ToString("N")[..8]}";
        await ExecAsync($"CREATE TABLE {table} (key text PRIMARY KEY)");
        return table;
    }

    /// <summary>Waits until <paramref name="expected"/> rows are committed in the business table.</summary>
    public async Task WaitForEffectsAsync(string table, int expected, TimeSpan timeout, string name)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        await using var conn = await dataSource.OpenConnectionAsync();
        await using var command = new NpgsqlCommand($"SELECT count(*) FROM {table}", conn);
        while (true)
        {
            var rows = (long)(await command.ExecuteScalarAsync())!;
            if (rows >= expected)
            {
                return;
            }

            if (Stopwatch.GetTimestamp() > deadline)
            {
                throw new TimeoutException($"{name}: {rows} of {expected} effects after {timeout}");
            }

            await Task.Delay(10);
        }
    }

    /// <summary>
    /// Checks effects == unique (every row applied exactly once) and reads the commit stamps of the measured messages
    /// (<paramref name="published"/>; null: every row): msgs/s after the first commit, and publish->commit latency.
    /// </summary>
    public async Task<Run> MeasureAsync(string table, int expectedRows, Dictionary<string, DateTime>? published, double clientCpuMicroseconds, string name)
    {
        await using var conn = await dataSource.OpenConnectionAsync();
        await using (var check = new NpgsqlCommand($"SELECT count(*), count(*) FILTER (WHERE applied = 1) FROM {table}", conn))
        await using (var reader = await check.ExecuteReaderAsync())
        {
            await reader.ReadAsync();
            var rows = reader.GetInt64(0);
            var once = reader.GetInt64(1);
            if (rows != expectedRows || once != expectedRows)
            {
                throw new InvalidOperationException($"{name}: expected {expectedRows} effects applied once each, found {rows} rows, {once} applied once");
            }
        }

        var stamps = new List<(string Id, long Tx, DateTime At)>();
        await using (var read = new NpgsqlCommand($"SELECT id, tx, at FROM {table}_commits", conn))
        await using (var reader = await read.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                var id = reader.GetString(0);
                if (published is null || published.ContainsKey(id))
                {
                    stamps.Add((id, reader.GetInt64(1), reader.GetDateTime(2)));
                }
            }
        }

        stamps.Sort((a, b) => a.At.CompareTo(b.At));
        var firstTx = stamps[0].Tx;
        var afterFirst = stamps.Count(s => s.Tx != firstTx);
        var span = (stamps[^1].At - stamps[0].At).TotalSeconds;
        var rate = span > 0 ? afterFirst / span : double.NaN;
        var latencies = published is null ? [] : stamps.Select(s => (s.At - published[s.Id]).TotalMilliseconds).Order().ToArray();
        var run = new Run(stamps.Count, rate, Percentile(latencies, 0.50), Percentile(latencies, 0.99), clientCpuMicroseconds, latencies);
        Console.WriteLine($"  {name}: {run.MessagesPerSecond:N0} msg/s, p50 {run.P50Ms:0.00} ms, p99 {run.P99Ms:0.00} ms, client CPU {run.ClientCpuMicroseconds:0} µs/msg");
        return run;
    }

    /// <summary>Listens for the commit notifications of a business table created with notify.</summary>
    public async Task<CommitListener> ListenAsync(string table)
    {
        var conn = await dataSource.OpenConnectionAsync();
        await using (var listen = new NpgsqlCommand($"LISTEN {Channel(table)}", conn))
        {
            await listen.ExecuteNonQueryAsync();
        }

        return new CommitListener(conn);
    }

    private static string Channel(string table) => "c_" + table.Replace('.', '_');

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, Math.Max(0, (int)Math.Ceiling(p * sorted.Length) - 1))];
}

/// <summary>Completes a waiter when the NOTIFY of its id arrives (sent by PostgreSQL only once the transaction committed).</summary>
internal sealed class CommitListener : IAsyncDisposable
{
    private readonly NpgsqlConnection _connection;
    private readonly ConcurrentDictionary<string, TaskCompletionSource> _waiting = new();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public CommitListener(NpgsqlConnection connection)
    {
        _connection = connection;
        _connection.Notification += (_, e) =>
        {
            if (_waiting.TryRemove(e.Payload, out var waiter))
            {
                waiter.TrySetResult();
            }
        };
        _loop = Task.Run(async () =>
        {
            try
            {
                while (!_stop.IsCancellationRequested)
                {
                    await _connection.WaitAsync(_stop.Token);
                }
            }
            catch (OperationCanceledException)
            {
            }
        });
    }

    public Task Expect(string id)
    {
        var waiter = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _waiting[id] = waiter;
        return waiter.Task;
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop;
        await _connection.DisposeAsync();
        _stop.Dispose();
    }
}

/// <summary>One scenario run: messages measured, msgs/s, latency percentiles, client CPU per message.</summary>
internal sealed record Run(int Messages, double MessagesPerSecond, double P50Ms, double P99Ms, double ClientCpuMicroseconds, double[] LatenciesMs);
