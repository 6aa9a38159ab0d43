// Pruning while consuming: fills the claim table with N expired rows, then measures a consumer's throughput for a
// fixed time without pruning and with the retention pruner running, in one run, and reports the ratio (target >= 0.8x).
// usage: dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Pruning -- [--rows 10000000] [--seconds 20] [--workers 4]
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Dapper;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.Postgres.Retention;
using Npgsql;

var rows = 10_000_000L;
var seconds = 20;
var workers = 4;
for (var i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--rows": rows = long.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--seconds": seconds = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        case "--workers": workers = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
        default: Console.Error.WriteLine($"unknown option {args[i]}"); return 2;
    }
}

var connectionString = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? throw new InvalidOperationException("IDEMPOTENCY_POSTGRES is not set: run ./build.sh bench or scripts/services.sh env.");
await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(connectionString) { MaxPoolSize = 40, CommandTimeout = 0 }.ConnectionString);
var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = "bench_pruning", Table = "processed", OutboxTable = "outbox" });
await using (var connection = await dataSource.OpenConnectionAsync())
{
    await connection.ExecuteAsync("DROP SCHEMA IF EXISTS bench_pruning CASCADE");
}

await store.EnsureSchemaAsync();
await using (var connection = await dataSource.OpenConnectionAsync())
{
    await connection.ExecuteAsync("CREATE TABLE bench_pruning.orders (id text PRIMARY KEY, applied int NOT NULL)");
    var fill = Stopwatch.StartNew();
    const long chunk = 1_000_000;
    for (long from = 0; from < rows; from += chunk)
    {
        await connection.ExecuteAsync(
            $"""
            INSERT INTO {store.QualifiedTableName} (handler_name, idempotency_key, fingerprint, created_at, completed_at, expires_at)
            SELECT 'bench', 'old-' || g, '\x00'::bytea, now() - interval '30 days', now() - interval '30 days', now() - interval '1 day'
            FROM generate_series(@from, @to) g
            """, new { from, to = Math.Min(rows, from + chunk) - 1 });
    }

    await connection.ExecuteAsync($"VACUUM ANALYZE {store.QualifiedTableName}");
    Console.WriteLine($"filled {rows:N0} expired rows in {fill.Elapsed.TotalSeconds:F0} s");
}

var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
    await context.GetNpgsqlConnection().ExecuteAsync(new CommandDefinition("INSERT INTO bench_pruning.orders (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction(), cancellationToken: ct))),
    new IdempotencyOptions { HandlerName = "bench" });
var next = 0L;

async Task<double> ConsumeAsync(string label, Func<CancellationToken, Task>? alongside)
{
    using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
    long done = 0;
    var watch = Stopwatch.StartNew();
    var background = alongside?.Invoke(stop.Token) ?? Task.CompletedTask;
    await Task.WhenAll(Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
    {
        while (!stop.IsCancellationRequested)
        {
            var key = $"new-{Interlocked.Increment(ref next)}";
            var result = await processor.ProcessAsync(new IncomingMessage(key, "{}"u8.ToArray()));
            if (result.Outcome == ProcessingOutcome.Processed)
            {
                Interlocked.Increment(ref done);
            }
        }
    })));
    try
    {
        await background;
    }
    catch (OperationCanceledException)
    {
    }

    var rate = done / watch.Elapsed.TotalSeconds;
    Console.WriteLine($"{label}: {rate:F0} msg/s");
    return rate;
}

var baseline = await ConsumeAsync("consumer alone", null);
var pruner = new PostgresRetentionPruner(store, new PostgresRetentionOptions { BatchSize = 5_000, PauseBetweenBatches = TimeSpan.FromMilliseconds(20), MaxBatchesPerRun = int.MaxValue });
var withPruning = await ConsumeAsync("consumer while pruning", async ct => await pruner.PruneOnceAsync(ct));
var ratio = withPruning / baseline;
var remaining = await store.DataSource.OpenConnection().ExecuteScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE expires_at < now()");
var load = File.ReadAllText("/proc/loadavg").Split(' ')[0];
var report = $"""
    # Pruning while consuming

    | rows expired | consumer alone (msg/s) | consumer while pruning (msg/s) | ratio | target | rows pruned during the {seconds} s | load average |
    |---:|---:|---:|---:|---:|---:|---:|
    | {rows:N0} | {baseline:F0} | {withPruning:F0} | {ratio:F2}x | >= 0.8x | {rows - remaining:N0} | {load} |

    Pruner: batches of 5,000 rows chosen by the expires_at index with FOR UPDATE SKIP LOCKED, 20 ms pause between batches; consumer: {workers} concurrent per-message transactions (claim + one insert).
    """;
Console.WriteLine(report);
Directory.CreateDirectory("benchmarks/results");
await File.WriteAllTextAsync("benchmarks/results/pruning.md", report);
await File.WriteAllTextAsync("benchmarks/results/pruning.json", JsonSerializer.Serialize(new { rows, seconds, workers, baseline, withPruning, ratio, target = 0.8, met = ratio >= 0.8, pruned = rows - remaining, load }));
return 0;
