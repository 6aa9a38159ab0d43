// Redis store benchmark: raw SET NX vs the store's claim + completion, with and without pipelining, and the layered
// store vs PostgreSQL alone on duplicate-heavy traffic. One run, same servers, ratios printed.
//
//   dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Redis -- [--seconds 3] [--pairs 5] [--redis host:port] [--out benchmarks/results]
//
// Without --redis it starts its own redis-server (from PATH) on a free port, so the shared server is not loaded.
// The layered scenario needs IDEMPOTENCY_POSTGRES; it is skipped (and says so) without it.
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Dapper;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.Redis;
using Idempotency.Storage;
using Npgsql;
using StackExchange.Redis;

var seconds = double.Parse(Arg("--seconds") ?? "3", CultureInfo.InvariantCulture);
var outDir = Arg("--out") ?? Path.Combine(FindRepoRoot(), "benchmarks", "results");
var redisEndpoint = Arg("--redis");
var pairs = int.Parse(Arg("--pairs") ?? "5", CultureInfo.InvariantCulture);
var pairRatios = new List<double>();
var pairRows = new List<(Row Raw, Row Ours)>();
Process? ownServer = null;
string? ownDir = null;
if (redisEndpoint is null)
{
    var port = FreePort();
    ownDir = Path.Combine(Path.GetTempPath(), "idem-bench-redis-" + Guid.NewGuid().ToString("N")[..8]);
    Directory.CreateDirectory(ownDir);
    ownServer = Process.Start(new ProcessStartInfo("redis-server", $"--port {port} --bind 127.0.0.1 --dir {ownDir} --save \"\" --appendonly no") { RedirectStandardOutput = true, UseShellExecute = false })
        ?? throw new InvalidOperationException("redis-server did not start");
    redisEndpoint = $"127.0.0.1:{port}";
    await WaitForPortAsync(port);
}

var rows = new List<Row>();
var notes = new List<string>();
try
{
    await using var connection = await ConnectionMultiplexer.ConnectAsync(redisEndpoint);
    var db = connection.GetDatabase();
    await using var admin = await ConnectionMultiplexer.ConnectAsync(redisEndpoint + ",allowAdmin=true"); // INFO cpu only
    RedisCpu.Server = admin.GetServer(admin.GetEndPoints()[0]);
    var duration = TimeSpan.FromSeconds(seconds);
    var value = new byte[32];
    Console.WriteLine($"Redis {redisEndpoint}; {Environment.ProcessorCount} cores; {seconds} s per scenario");

    // 1. Raw SET NX PX, one command in flight per worker (16 workers), as redis-benchmark without -P.
    rows.Add(await MeasureAsync("raw SET NX PX, 16 workers, 1 in flight each", "ops", 16, duration, 1, async (w, i) =>
    {
        await db.StringSetAsync($"raw1:{w}:{i}", value, TimeSpan.FromSeconds(60), When.NotExists);
    }));

    // 2. Raw SET NX PX pipelined: 100 commands sent together per worker, 4 workers.
    var run = 0;
    Func<int, long, Task> rawPipelined = async (w, i) =>
    {
        var tasks = new Task[100];
        for (var k = 0; k < 100; k++)
        {
            tasks[k] = db.StringSetAsync($"raw100:{run}:{w}:{i}:{k}", value, TimeSpan.FromSeconds(60), When.NotExists);
        }

        await Task.WhenAll(tasks);
    };
    rows.Add(await MeasureAsync("raw SET NX PX, pipelined 100 deep, 4 workers", "ops", 4, duration, 100, rawPipelined));

    var options = new RedisIdempotencyStoreOptions { KeyPrefix = "bench" + Guid.NewGuid().ToString("N")[..6] };
    var store = new RedisIdempotencyStore(connection, options);
    var fingerprint = PayloadFingerprint.Compute("{\"amount\":5}"u8);

    // 3. Store: claim + completion per message (Lua claim, Lua complete), 16 workers.
    rows.Add(await MeasureAsync("store claim + complete, one key per transaction, 16 workers", "keys", 16, duration, 1, async (w, i) =>
    {
        var tx = await store.BeginAsync();
        await using var scope = tx;
        var claim = new ClaimRequest("bench", $"s1:{w}:{i}", fingerprint, default);
        if ((await tx.ClaimAsync(claim)).Status == ClaimStatus.Claimed)
        {
            await tx.CommitAsync([new CompletionRecord(claim, TimeSpan.Zero)], []);
        }
    }));

    // 4. Store batched: 100 claims pipelined + one completion script for the batch, 4 workers.
    Func<int, long, Task> storeBatched = async (w, i) =>
    {
        var tx = await store.BeginAsync();
        await using var scope = tx;
        var claims = new ClaimRequest[100];
        for (var k = 0; k < 100; k++)
        {
            claims[k] = new ClaimRequest("bench", $"s100:{run}:{w}:{i}:{k:D3}", fingerprint, default);
        }

        await tx.ClaimBatchAsync(claims);
        await tx.CommitAsync(claims.Select(c => new CompletionRecord(c, TimeSpan.Zero)).ToArray(), []);
    };
    rows.Add(await MeasureAsync("store claim + complete, batches of 100 (one claim script, one commit), 4 workers", "keys", 4, duration, 100, storeBatched));

    // 4b. The same two alternated in short pairs: on a shared machine the load moves between scenarios, so the
    // ratio of each pair (measured seconds apart) is steadier than the ratio of two rows measured a minute apart.
    for (run = 1; run <= pairs; run++)
    {
        var raw = await MeasureAsync($"pair {run}: raw SET NX PX, pipelined 100 deep, 4 workers", "ops", 4, TimeSpan.FromSeconds(1), 100, rawPipelined);
        var ours = await MeasureAsync($"pair {run}: store claim + complete, batches of 100, 4 workers", "keys", 4, TimeSpan.FromSeconds(1), 100, storeBatched);
        pairRatios.Add(ours.Rate / raw.Rate);
        pairRows.Add((raw, ours));
    }

    // 5. Store batched with Redis-held state: the handler's INCR rides in the MULTI/EXEC with the records.
    rows.Add(await MeasureAsync("store batches of 100 + INCR per key in MULTI/EXEC (Redis-held state), 4 workers", "keys", 4, duration, 100, async (w, i) =>
    {
        var tx = (RedisIdempotencyTransaction)await store.BeginAsync();
        await using var scope = tx;
        var claims = new ClaimRequest[100];
        for (var k = 0; k < 100; k++)
        {
            claims[k] = new ClaimRequest("bench", $"h100:{w}:{i}:{k:D3}", fingerprint, default);
        }

        await tx.ClaimBatchAsync(claims);
        for (var k = 0; k < 100; k++)
        {
            _ = tx.RedisTransaction.StringIncrementAsync($"{options.KeyPrefix}:state:{w}");
        }

        await tx.CommitAsync(claims.Select(c => new CompletionRecord(c, TimeSpan.Zero)).ToArray(), []);
    }));

    // 6. Through the processor (fingerprint, metrics, handler call) with an empty handler.
    var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "bench-proc" });
    var body = Encoding.UTF8.GetBytes("{\"amount\":5}");
    rows.Add(await MeasureAsync("IdempotentProcessor.ProcessBatchAsync, batches of 100, empty handler, 4 workers", "msgs", 4, duration, 100, async (w, i) =>
    {
        var batch = new IncomingMessage[100];
        for (var k = 0; k < 100; k++)
        {
            batch[k] = new IncomingMessage($"p:{w}:{i}:{k:D3}", body) { Destination = "bench" };
        }

        await processor.ProcessBatchAsync(batch);
    }));

    // redis-benchmark against the same server, if installed.
    var (host, portText) = (redisEndpoint.Split(':')[0], redisEndpoint.Split(':')[1]);
    foreach (var pipeline in new[] { 1, 16 })
    {
        var rps = RunRedisBenchmark(host, portText, pipeline);
        if (rps is { } r)
        {
            rows.Add(new Row($"redis-benchmark -t set -c 50 -P {pipeline} (C client, same server)", "ops", r, double.NaN, double.NaN, Process.GetCurrentProcess().PeakWorkingSet64));
        }
        else
        {
            notes.Add("redis-benchmark not found on PATH: its rows are missing.");
            break;
        }
    }

    // Layered vs PostgreSQL alone on duplicate-heavy traffic.
    var pg = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES");
    if (string.IsNullOrEmpty(pg))
    {
        notes.Add("IDEMPOTENCY_POSTGRES is not set: the layered scenario was skipped.");
    }
    else
    {
        rows.AddRange(await LayeredScenarioAsync(connection, pg, duration));
    }

}
finally
{
    if (ownServer is not null)
    {
        ownServer.Kill();
        await ownServer.WaitForExitAsync();
        Directory.Delete(ownDir!, recursive: true);
    }
}

// Report.
Row Find(string prefix) => rows.First(r => r.Scenario.StartsWith(prefix, StringComparison.Ordinal));
var ratios = new List<(string, double)>
{
    ("batched store claims+completions / pipelined raw SET NX (.NET)", Find("store claim + complete, batches").Rate / Find("raw SET NX PX, pipelined").Rate),
    ("single store claim+completion / unpipelined raw SET NX (.NET)", Find("store claim + complete, one key").Rate / Find("raw SET NX PX, 16").Rate),
};
if (pairRatios.Count > 0)
{
    var sorted = pairRatios.Order().ToArray();
    ratios.Add(($"batched store / pipelined raw SET NX, median of {sorted.Length} alternating 1 s pairs (min {sorted[0]:0.00}, max {sorted[^1]:0.00})", sorted[sorted.Length / 2]));
}

if (rows.FirstOrDefault(r => r.Scenario.StartsWith("redis-benchmark -t set -c 50 -P 16", StringComparison.Ordinal)) is { } rb)
{
    ratios.Add(("batched store claims+completions / redis-benchmark -P 16", Find("store claim + complete, batches").Rate / rb.Rate));
}

if (rows.FirstOrDefault(r => r.Scenario.StartsWith("layered", StringComparison.Ordinal)) is { } layered)
{
    var pgAlone = Find("PostgreSQL alone, batches");
    ratios.Add(("layered / PostgreSQL alone, 90% duplicates, batches", layered.Rate / pgAlone.Rate));
    ratios.Add(("layered / PostgreSQL alone, 100% duplicates, single messages", Find("layered Redis + PostgreSQL, single").Rate / Find("PostgreSQL alone, single").Rate));
}

var md = new StringBuilder();
md.AppendLine($"# Redis store benchmark ({DateTime.UtcNow:yyyy-MM-dd}, {Environment.ProcessorCount} cores, Redis on loopback, {seconds} s per scenario)");
md.AppendLine();
md.AppendLine("| scenario | unit | per second | p50 ms | p99 ms | client CPU µs/unit | redis-server CPU µs/unit | peak working set MB |");
md.AppendLine("|---|---|---:|---:|---:|---:|---:|---:|");
foreach (var r in rows)
{
    md.AppendLine($"| {r.Scenario} | {r.Unit} | {r.Rate:N0} | {Fmt(r.P50)} | {Fmt(r.P99)} | {Fmt1(r.ClientCpuMicroseconds)} | {Fmt1(r.RedisCpuMicroseconds)} | {r.PeakWorkingSet / 1024 / 1024} |");
}

md.AppendLine();
md.AppendLine("| ratio | value |");
md.AppendLine("|---|---:|");
foreach (var (name, v) in ratios)
{
    md.AppendLine($"| {name} | {v:0.00}x |");
}

if (pairRows.Count > 0)
{
    md.AppendLine();
    md.AppendLine("Alternating 1 s pairs (raw SET NX PX pipelined 100 deep vs store claim + complete in batches of 100, 4 workers each):");
    md.AppendLine();
    md.AppendLine("| pair | raw ops/s | store keys/s | ratio | raw CPU µs/op client / redis-server | store CPU µs/key client / redis-server |");
    md.AppendLine("|---:|---:|---:|---:|---:|---:|");
    for (var i = 0; i < pairRows.Count; i++)
    {
        var (raw, ours) = pairRows[i];
        md.AppendLine($"| {i + 1} | {raw.Rate:N0} | {ours.Rate:N0} | {ours.Rate / raw.Rate:0.00} | {Fmt1(raw.ClientCpuMicroseconds)} / {Fmt1(raw.RedisCpuMicroseconds)} | {Fmt1(ours.ClientCpuMicroseconds)} / {Fmt1(ours.RedisCpuMicroseconds)} |");
    }
}

md.AppendLine();
md.AppendLine("Latency columns are per operation for one-in-flight rows and per batch of 100 for batched rows.");
md.AppendLine("CPU columns: CPU seconds spent during the scenario per unit (op, key or message), by this process (the .NET client) and by redis-server (INFO cpu, used_cpu_user + used_cpu_sys); both share the machine's cores.");
foreach (var note in notes)
{
    md.AppendLine($"- {note}");
}

Console.WriteLine();
Console.WriteLine(md.ToString());
Directory.CreateDirectory(outDir);
await File.WriteAllTextAsync(Path.Combine(outDir, "redis.md"), md.ToString());
await File.WriteAllTextAsync(Path.Combine(outDir, "redis.json"), JsonSerializer.Serialize(new
{
    date = DateTime.UtcNow,
    cores = Environment.ProcessorCount,
    seconds,
    rows = rows.Select(r => new { r.Scenario, r.Unit, rate = Math.Round(r.Rate), clientCpuMicroseconds = double.IsNaN(r.ClientCpuMicroseconds) ? (double?)null : Math.Round(r.ClientCpuMicroseconds, 2), redisCpuMicroseconds = double.IsNaN(r.RedisCpuMicroseconds) ? (double?)null : Math.Round(r.RedisCpuMicroseconds, 2), p50ms = double.IsNaN(r.P50) ? (double?)null : Math.Round(r.P50, 3), p99ms = double.IsNaN(r.P99) ? (double?)null : Math.Round(r.P99, 3), peakWorkingSetBytes = r.PeakWorkingSet }),
    ratios = ratios.Select(r => new { name = r.Item1, value = Math.Round(r.Item2, 3) }),
    pairs = pairRows.Select(p => new { rawRate = Math.Round(p.Raw.Rate), storeRate = Math.Round(p.Ours.Rate), ratio = Math.Round(p.Ours.Rate / p.Raw.Rate, 3), rawClientCpuMicroseconds = Math.Round(p.Raw.ClientCpuMicroseconds, 2), rawRedisCpuMicroseconds = Math.Round(p.Raw.RedisCpuMicroseconds, 2), storeClientCpuMicroseconds = Math.Round(p.Ours.ClientCpuMicroseconds, 2), storeRedisCpuMicroseconds = Math.Round(p.Ours.RedisCpuMicroseconds, 2) }),
    notes,
}, new JsonSerializerOptions { WriteIndented = true }));
return 0;

static async Task<List<Row>> LayeredScenarioAsync(ConnectionMultiplexer connection, string pgConnectionString, TimeSpan duration)
{
    var schema = "bench_" + Guid.NewGuid().ToString("N")[..8];
    await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(pgConnectionString) { MaxPoolSize = 32 }.ConnectionString);
    await using (var c = await dataSource.OpenConnectionAsync())
    {
        await c.ExecuteAsync($"CREATE SCHEMA {schema}; CREATE TABLE {schema}.business_pg (id text PRIMARY KEY, applied int NOT NULL); CREATE TABLE {schema}.business_layered (id text PRIMARY KEY, applied int NOT NULL)");
    }

    try
    {
        var body = Encoding.UTF8.GetBytes("{\"amount\":5}");
        var results = new List<Row>();
        foreach (var layered in new[] { false, true })
        {
            var postgres = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = layered ? "processed_layered" : "processed_pg", OutboxTable = layered ? "outbox_layered" : "outbox_pg" });
            await postgres.EnsureSchemaAsync();
            IIdempotencyStore store = layered
                ? new LayeredIdempotencyStore(connection, new RedisIdempotencyStoreOptions { KeyPrefix = "benchl" + Guid.NewGuid().ToString("N")[..6] }, postgres)
                : postgres;
            var business = $"{schema}.business_{(layered ? "layered" : "pg")}";
            var handler = IdempotentHandler.Create(async (context, ct) =>
                await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {business} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction()));
            var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench-layered" });

            // Warm-up: 5,000 keys processed, so 90% of the measured traffic can be their duplicates.
            const int known = 5_000;
            for (var i = 0; i < known; i += 100)
            {
                var warmResults = await processor.ProcessBatchAsync(Enumerable.Range(i, 100).Select(k => new IncomingMessage($"k{k:D6}", body) { Destination = "bench" }).ToArray());
                if (warmResults.FirstOrDefault(r => r.Outcome != ProcessingOutcome.Processed) is { } bad)
                {
                    throw new InvalidOperationException($"Warm-up of {store.Name}: {bad.Outcome}", bad.Exception);
                }
            }

            var next = known;
            var random = new Random(7);
            var name = layered ? "layered Redis + PostgreSQL" : "PostgreSQL alone";
            results.Add(await MeasureAsync($"{name}, batches of 100, 90% duplicates, 4 workers", "msgs", 4, duration, 100, async (w, i) =>
            {
                var batch = new IncomingMessage[100];
                for (var k = 0; k < 100; k++)
                {
                    string key;
                    lock (random)
                    {
                        key = random.Next(10) == 0 ? $"n{Interlocked.Increment(ref next):D7}" : $"k{random.Next(known):D6}";
                    }

                    batch[k] = new IncomingMessage(key, body) { Destination = "bench", Redelivered = true };
                }

                await processor.ProcessBatchAsync(batch);
            }));
            results.Add(await MeasureAsync($"{name}, single messages, 100% duplicates, 16 workers", "msgs", 16, duration, 1, async (w, i) =>
            {
                int k;
                lock (random)
                {
                    k = random.Next(known);
                }

                await processor.ProcessAsync(new IncomingMessage($"k{k:D6}", body) { Destination = "bench", Redelivered = true });
            }));
        }

        return results;
    }
    finally
    {
        await using var c = await dataSource.OpenConnectionAsync();
        await c.ExecuteAsync($"DROP SCHEMA {schema} CASCADE");
    }
}

static async Task<Row> MeasureAsync(string scenario, string unit, int workers, TimeSpan duration, int perCall, Func<int, long, Task> call)
{
    // Short warm-up so JIT and connection set-up are not measured.
    var warm = DateTime.UtcNow + TimeSpan.FromMilliseconds(300);
    await Task.WhenAll(Enumerable.Range(0, workers).Select(w => Task.Run(async () =>
    {
        for (long i = 0; DateTime.UtcNow < warm; i++)
        {
            await call(w + 1000, i);
        }
    })));

    var latencies = new List<double>[workers];
    var serverCpu0 = await RedisCpu.SecondsAsync();
    var clientCpu0 = Process.GetCurrentProcess().TotalProcessorTime;
    var stopwatch = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, workers).Select(w => Task.Run(async () =>
    {
        var mine = latencies[w] = new List<double>(1 << 16);
        for (long i = 0; stopwatch.Elapsed < duration; i++)
        {
            var started = Stopwatch.GetTimestamp();
            await call(w, i);
            mine.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
    })));
    var elapsed = stopwatch.Elapsed.TotalSeconds;
    var clientCpu = (Process.GetCurrentProcess().TotalProcessorTime - clientCpu0).TotalSeconds;
    var serverCpu = await RedisCpu.SecondsAsync() - serverCpu0;
    var all = latencies.SelectMany(l => l).Order().ToArray();
    var units = all.Length * (double)perCall;
    var row = new Row(scenario, unit, units / elapsed, Percentile(all, 0.50), Percentile(all, 0.99), Process.GetCurrentProcess().PeakWorkingSet64)
    {
        ClientCpuMicroseconds = clientCpu * 1e6 / units,
        RedisCpuMicroseconds = serverCpu * 1e6 / units,
    };
    Console.WriteLine($"{scenario}: {row.Rate:N0} {unit}/s, p50 {row.P50:0.000} ms, p99 {row.P99:0.000} ms, CPU per {unit[..^1]}: client {row.ClientCpuMicroseconds:0.0} us, redis-server {row.RedisCpuMicroseconds:0.0} us");
    return row;
}

static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];

static string Fmt1(double v) => double.IsNaN(v) ? "—" : v.ToString("0.0", CultureInfo.InvariantCulture);

static string Fmt(double v) => double.IsNaN(v) ? "—" : v.ToString("0.000", CultureInfo.InvariantCulture);

static double? RunRedisBenchmark(string host, string port, int pipeline)
{
    try
    {
        using var process = Process.Start(new ProcessStartInfo("redis-benchmark", $"-h {host} -p {port} -t set -c 50 -n 300000 -P {pipeline} -q -r 1000000") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false });
        if (process is null)
        {
            return null;
        }

        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        var line = output.Split('\r', '\n').LastOrDefault(l => l.StartsWith("SET:", StringComparison.Ordinal));
        var number = line?.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1];
        Console.WriteLine($"redis-benchmark -P {pipeline}: {line?.Trim()}");
        return number is null ? null : double.Parse(number, CultureInfo.InvariantCulture);
    }
    catch (System.ComponentModel.Win32Exception)
    {
        return null;
    }
}

static int FreePort()
{
    using var listener = new TcpListener(IPAddress.Loopback, 0);
    listener.Start();
    return ((IPEndPoint)listener.LocalEndpoint).Port;
}

static async Task WaitForPortAsync(int port)
{
    for (var i = 0; i < 100; i++)
    {
        try
        {
            using var client = new TcpClient();
            await client.ConnectAsync(IPAddress.Loopback, port);
            return;
        }
        catch (SocketException)
        {
            await Task.Delay(50);
        }
    }

    throw new TimeoutException($"redis-server on port {port} did not start.");
}

static string FindRepoRoot()
{
    for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
    {
        if (File.Exists(Path.Combine(dir.FullName, "Idempotency.sln")))
        {
            return dir.FullName;
        }
    }

    return Directory.GetCurrentDirectory();
}

string? Arg(string name)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

internal sealed record Row(string Scenario, string Unit, double Rate, double P50, double P99, long PeakWorkingSet)
{
    public double ClientCpuMicroseconds { get; init; } = double.NaN;

    public double RedisCpuMicroseconds { get; init; } = double.NaN;
}

/// <summary>The redis-server's own CPU time, from INFO cpu, so a row can say where the time per key goes.</summary>
internal static class RedisCpu
{
    public static IServer? Server { get; set; }

    public static async Task<double> SecondsAsync()
    {
        if (Server is null)
        {
            return double.NaN;
        }

        var cpu = (await Server.InfoAsync("cpu")).SelectMany(g => g).ToDictionary(p => p.Key, p => p.Value);
        return double.Parse(cpu["used_cpu_user"], CultureInfo.InvariantCulture) + double.Parse(cpu["used_cpu_sys"], CultureInfo.InvariantCulture);
    }
}

