// Plain manual-ack consumer vs IdempotentRabbitMqConsumer (per message, batch) vs the PostgreSQL single-row transaction
// ceiling, in ONE run, at the same prefetch and concurrency.
//   dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.RabbitMQ -- [--messages 20000] [--concurrency 4] [--prefetch 200] [--batch 50]
// Reads IDEMPOTENCY_POSTGRES and IDEMPOTENCY_RABBITMQ. Writes benchmarks/results/rabbitmq.md and rabbitmq.json.
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text;
using System.Text.Json;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.RabbitMQ;
using Npgsql;
using NpgsqlTypes;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

var messages = Arg("--messages", 6_000); // in all rounds together, per scenario
var concurrency = Arg("--concurrency", 4);
var prefetch = Arg("--prefetch", 200);
var batchSize = Arg("--batch", 50);
var rounds = Arg("--rounds", 3);
var postgres = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? "Host=127.0.0.1;Port=5432;Username=app;Password=app;Database=appdb";
var rabbit = Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQ") ?? "amqp://guest:guest@127.0.0.1:5672/";

var schema = "bench_rmq_" + Guid.NewGuid().ToString("N")[..8];
await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(postgres) { MaxPoolSize = 64 }.ConnectionString);
await Exec($"CREATE SCHEMA {schema}");
var factory = new ConnectionFactory { Uri = new Uri(rabbit), AutomaticRecoveryEnabled = true, ClientProvidedName = "bench" };
await using var connection = await factory.CreateConnectionAsync();
await using var admin = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
var queues = new List<string>();
var results = new List<Result>();
try
{
    Console.WriteLine($"load average at start: {LoadAverage()}");
    Console.WriteLine($"RabbitMQ benchmark: {messages} messages per scenario over {rounds} rounds, prefetch {prefetch}, concurrency {concurrency}, batch {batchSize}, {Environment.ProcessorCount} cores");

    // Warm-up (JIT, pools, broker): small rounds of every scenario, not reported.
    await Ceiling("warmup", 500, claim: false);
    await Plain("warmup", 500);
    await Ours("warmup", 500, batch: 1);
    await Ours("warmup", 500, batch: 1, ClaimTiming.AtCommit);
    await Ours("warmup", 500, batch: batchSize);

    // Rounds interleave the scenarios so that a load swing on the shared machine hits all of them alike; each
    // scenario reports its median round (by throughput).
    var scenarios = new (string Name, Func<int, Task<Result>> Run)[]
    {
        ("PostgreSQL single-row transaction ceiling (upsert + commit)", n => Ceiling("ceiling", n, claim: false)),
        ("PostgreSQL claim + upsert transaction (plain INSERT key ON CONFLICT DO NOTHING + upsert)", n => Ceiling("claim+upsert", n, claim: true)),
        ("Plain manual-ack consumer, own transaction per message", n => Plain("plain", n)),
        ("IdempotentRabbitMqConsumer, per message", n => Ours("ours", n, batch: 1)),
        ("IdempotentRabbitMqConsumer, default options (natural batching, per-message handler)", n => Ours("default", n, batch: new RabbitMqIdempotencyOptions().BatchSize, natural: true)),
        ("IdempotentRabbitMqConsumer, per message, claim at commit", n => Ours("ours-at-commit", n, batch: 1, ClaimTiming.AtCommit)),
        ($"IdempotentRabbitMqConsumer, batch mode ({batchSize}/batch, set-based handler)", n => Ours("batch", n, batch: batchSize)),
        ("IdempotentProcessor alone, no broker", n => ProcessorOnly("processor", n)),
        ("The store's SQL by hand: claim CTE + upsert + completion UPDATE with COMMIT (3 round trips)", n => StoreSql("store-sql", n)),
    };
    var perRound = Math.Max(100, messages / rounds);
    var runs = scenarios.Select(_ => new List<Result>()).ToArray();
    for (var round = 1; round <= rounds; round++)
    {
        Console.WriteLine($"round {round}/{rounds} ({perRound} messages per scenario), load average {LoadAverage()}");
        for (var i = 0; i < scenarios.Length; i++)
        {
            runs[i].Add(await scenarios[i].Run(perRound));
        }
    }

    for (var i = 0; i < scenarios.Length; i++)
    {
        var sorted = runs[i].OrderBy(r => r.MessagesPerSecond).ToList();
        results.Add(sorted[sorted.Count / 2] with { Name = scenarios[i].Name, Rounds = string.Join(" / ", runs[i].Select(r => r.MessagesPerSecond.ToString("N0", CultureInfo.InvariantCulture))) });
    }
}
finally
{
    foreach (var queue in queues)
    {
        await admin.QueueDeleteAsync(queue, ifUnused: false, ifEmpty: false);
    }

    await Exec($"DROP SCHEMA {schema} CASCADE");
}

var ceiling = results[0].MessagesPerSecond;
var plain = results[2].MessagesPerSecond;
var ours = results[3].MessagesPerSecond;
var byDefault = results[4].MessagesPerSecond;
var atCommit = results[5].MessagesPerSecond;
var batched = results[6].MessagesPerSecond;
var ratios = new Dictionary<string, double>
{
    ["ours default (natural batching) / plain (target >= 1.0)"] = byDefault / plain,
    ["ours / plain (target >= 0.85)"] = ours / plain,
    ["ours / single-row ceiling (target >= 0.6)"] = ours / ceiling,
    ["batch / ours per message (target >= 3)"] = batched / ours,
    ["ours claim at commit / plain (target >= 0.85)"] = atCommit / plain,
    ["ours claim at commit / single-row ceiling (target >= 0.6)"] = atCommit / ceiling,
    ["plain / single-row ceiling"] = plain / ceiling,
};

var md = new StringBuilder();
md.AppendLine(CultureInfo.InvariantCulture, $"# RabbitMQ benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
md.AppendLine();
md.AppendLine(CultureInfo.InvariantCulture, $"{messages} messages per scenario in {rounds} interleaved rounds (the table shows each scenario's median round; all rounds' msgs/s in the last column); prefetch {prefetch}; concurrency {concurrency} (plain: ConsumerDispatchConcurrency; ours: Concurrency; ceiling: connections); batch size {batchSize}; {Environment.ProcessorCount} cores; persistent messages on a classic queue; PostgreSQL and RabbitMQ on loopback.");
md.AppendLine("Latency columns (ceiling: one transaction for both):");
md.AppendLine("- delivery->ack: from the delivery callback to the completed basic.ack. The plain consumer's callback runs only when one of its 4 dispatch slots is free, so its wait for a slot is not counted; ours' callback only copies the delivery into the worker pool, so the wait for a worker IS counted (Little's law: ~prefetch / throughput).");
md.AppendLine("- work->ack: from the start of the work to the ack: plain = callback entry (before it opens its connection), ours = handler entry (after the pool open, BEGIN and the claim round trip, so slightly understated).");
md.AppendLine("Working set: the highest sampled during the scenario (20 ms samples).");
md.AppendLine();
md.AppendLine("| scenario | msgs/s | delivery->ack p50 ms | p99 ms | work->ack p50 ms | p99 ms | peak working set MB | rounds msgs/s |");
md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---|");
foreach (var r in results)
{
    md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.MessagesPerSecond:N0} | {r.P50Ms:0.00} | {r.P99Ms:0.00} | {r.WorkP50Ms:0.00} | {r.WorkP99Ms:0.00} | {r.PeakWorkingSetMb:0} | {r.Rounds} |");
}

md.AppendLine();
md.AppendLine("| ratio | value | met |");
md.AppendLine("|---|---:|---|");
var targets = new Dictionary<string, double> { ["ours default (natural batching) / plain (target >= 1.0)"] = 1.0, ["ours / plain (target >= 0.85)"] = 0.85, ["ours / single-row ceiling (target >= 0.6)"] = 0.6, ["batch / ours per message (target >= 3)"] = 3, ["ours claim at commit / plain (target >= 0.85)"] = 0.85, ["ours claim at commit / single-row ceiling (target >= 0.6)"] = 0.6 };
foreach (var (name, value) in ratios)
{
    var met = targets.TryGetValue(name, out var target) ? (value >= target ? "yes" : "NO") : "";
    md.AppendLine(CultureInfo.InvariantCulture, $"| {name} | {value:0.00} | {met} |");
}

md.AppendLine();
md.AppendLine(CultureInfo.InvariantCulture, $"Process peak working set at the end (Process.PeakWorkingSet64, all scenarios): {Process.GetCurrentProcess().PeakWorkingSet64 / 1024.0 / 1024.0:0} MB. Machine load average at the end: {LoadAverage()}.");
Console.WriteLine();
Console.WriteLine(md.ToString());
var resultsDir = FindResultsDirectory();
await File.WriteAllTextAsync(Path.Combine(resultsDir, "rabbitmq.md"), md.ToString());
await File.WriteAllTextAsync(Path.Combine(resultsDir, "rabbitmq.json"), JsonSerializer.Serialize(
    new { date = DateTime.UtcNow, messages, rounds, prefetch, concurrency, batchSize, cores = Environment.ProcessorCount, results, ratios },
    new JsonSerializerOptions { WriteIndented = true }));
Console.WriteLine($"Written to {resultsDir}/rabbitmq.md and rabbitmq.json");
return;

// ---------------------------------------------------------------------------------------------------------------

async Task<Result> Ceiling(string name, int count, bool claim)
{
    var table = await BusinessTable();
    var keys = claim ? await KeyTable() : null;
    var latencies = new Latencies();
    var next = -1;
    using var sampler = new WorkingSetSampler();
    var watch = Stopwatch.StartNew();
    var workers = Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
    {
        int i;
        while ((i = Interlocked.Increment(ref next)) < count)
        {
            var started = Stopwatch.GetTimestamp();
            await using var conn = await dataSource.OpenConnectionAsync();
            await using var tx = await conn.BeginTransactionAsync();
            var id = "c-" + i.ToString(CultureInfo.InvariantCulture);
            if (keys is not null)
            {
                await using var claimCommand = new NpgsqlCommand($"INSERT INTO {keys} (key) VALUES (@id) ON CONFLICT DO NOTHING", conn, tx);
                claimCommand.Parameters.AddWithValue("id", id);
                await claimCommand.ExecuteNonQueryAsync();
            }

            await Upsert(conn, tx, table, id);
            await tx.CommitAsync();
            latencies.Add(Stopwatch.GetElapsedTime(started));
        }
    })).ToArray();
    await Task.WhenAll(workers);
    return latencies.Result(name, count, watch.Elapsed, sampler.PeakMb, name);
}

async Task<Result> StoreSql(string name, int count)
{
    var table = await BusinessTable();
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_" + Guid.NewGuid().ToString("N")[..8], OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8] });
    await store.EnsureSchemaAsync();
    var keys = store.QualifiedTableName;
    var claimSql = $"""
        WITH ins AS (
            INSERT INTO {keys} (handler_name, idempotency_key, fingerprint, expires_at)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT DO NOTHING
            RETURNING 1)
        SELECT true, NULL::bytea, NULL::bytea FROM ins
        UNION ALL
        SELECT false, t.fingerprint, t.result FROM {keys} t
        WHERE t.handler_name = $1 AND t.idempotency_key = $2 AND NOT EXISTS (SELECT 1 FROM ins)
        """;
    var completeSql = $"UPDATE {keys} SET completed_at = clock_timestamp(), duration_ms = $3, result = $4 WHERE handler_name = $1 AND idempotency_key = $2";
    var latencies = new Latencies();
    var next = -1;
    using var sampler = new WorkingSetSampler();
    var watch = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
    {
        int i;
        while ((i = Interlocked.Increment(ref next)) < count)
        {
            var started = Stopwatch.GetTimestamp();
            var id = "m-" + i.ToString(CultureInfo.InvariantCulture);
            await using var conn = await dataSource.OpenConnectionAsync();
            var tx = await conn.BeginTransactionAsync();
            await using (var claim = new NpgsqlCommand(claimSql, conn, tx))
            {
                claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = "bench" });
                claim.Parameters.Add(new NpgsqlParameter<string> { TypedValue = id });
                claim.Parameters.Add(new NpgsqlParameter<byte[]> { TypedValue = System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(id)) });
                claim.Parameters.Add(new NpgsqlParameter<DateTime> { TypedValue = DateTime.UtcNow.AddDays(7) });
                await using var reader = await claim.ExecuteReaderAsync();
                while (await reader.ReadAsync())
                {
                }
            }

            await Upsert(conn, tx, table, id);
            await using (var batch = new NpgsqlBatch(conn, tx))
            {
                var complete = new NpgsqlBatchCommand(completeSql);
                complete.Parameters.Add(new NpgsqlParameter<string> { TypedValue = "bench" });
                complete.Parameters.Add(new NpgsqlParameter<string> { TypedValue = id });
                complete.Parameters.Add(new NpgsqlParameter<double> { TypedValue = 1.0 });
                complete.Parameters.Add(new NpgsqlParameter { Value = DBNull.Value, NpgsqlDbType = NpgsqlDbType.Bytea });
                batch.BatchCommands.Add(complete);
                batch.BatchCommands.Add(new NpgsqlBatchCommand("COMMIT"));
                await batch.ExecuteNonQueryAsync();
            }

            await tx.DisposeAsync();
            latencies.Add(Stopwatch.GetElapsedTime(started));
        }
    })));
    var elapsed = watch.Elapsed;
    await Verify(table, count, name);
    return latencies.Result(name, count, elapsed, sampler.PeakMb, $"{concurrency} connections");
}

async Task<Result> ProcessorOnly(string name, int count)
{
    var table = await BusinessTable();
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_" + Guid.NewGuid().ToString("N")[..8], OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8] });
    await store.EnsureSchemaAsync();
    var processor = new IdempotentProcessor(store, IdempotentHandler.Create((ctx, ct) => new ValueTask(Upsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Key))), new IdempotencyOptions { HandlerName = "bench" });
    var latencies = new Latencies();
    var next = -1;
    using var sampler = new WorkingSetSampler();
    var watch = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
    {
        int i;
        while ((i = Interlocked.Increment(ref next)) < count)
        {
            var started = Stopwatch.GetTimestamp();
            var id = "m-" + i.ToString(CultureInfo.InvariantCulture);
            var result = await processor.ProcessAsync(new IncomingMessage(id, Encoding.UTF8.GetBytes($"{{\"id\":\"{id}\",\"amount\":5}}")) { Broker = "rabbitmq", Destination = "bench" });
            if (result.Outcome != ProcessingOutcome.Processed)
            {
                throw new InvalidOperationException($"{id}: {result.Outcome}", result.Exception);
            }

            latencies.Add(Stopwatch.GetElapsedTime(started));
        }
    })));
    var elapsed = watch.Elapsed;
    await Verify(table, count, name);
    return latencies.Result(name, count, elapsed, sampler.PeakMb, $"{concurrency} tasks");
}

async Task<Result> Plain(string name, int count)
{
    var table = await BusinessTable();
    var queue = await Queue(count);
    var latencies = new Latencies();
    var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    var acked = 0;
    await using var raw = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: false, publisherConfirmationTrackingEnabled: false, consumerDispatchConcurrency: (ushort)concurrency));
    var channel = AckTap.Wrap(raw, tag =>
    {
        latencies.Acked(tag);
        if (Interlocked.Increment(ref acked) == count)
        {
            done.TrySetResult();
        }
    });
    await channel.BasicQosAsync(0, (ushort)prefetch, false);
    var consumer = new AsyncEventingBasicConsumer(channel);
    consumer.ReceivedAsync += async (_, ea) =>
    {
        latencies.Delivered(ea.DeliveryTag);
        latencies.WorkStarted(ea.DeliveryTag);
        var id = ea.BasicProperties.MessageId!;
        await using (var conn = await dataSource.OpenConnectionAsync())
        await using (var tx = await conn.BeginTransactionAsync())
        {
            await Upsert(conn, tx, table, id);
            await tx.CommitAsync();
        }

        await channel.BasicAckAsync(ea.DeliveryTag, multiple: false);
    };
    using var sampler = new WorkingSetSampler();
    var watch = Stopwatch.StartNew();
    var tag = await channel.BasicConsumeAsync(queue, autoAck: false, consumer);
    await done.Task.WaitAsync(TimeSpan.FromMinutes(5));
    var elapsed = watch.Elapsed;
    await channel.BasicCancelAsync(tag);
    await Verify(table, count, name);
    return latencies.Result(name, count, elapsed, sampler.PeakMb, $"ConsumerDispatchConcurrency={concurrency}");
}

async Task<Result> Ours(string name, int count, int batch, ClaimTiming claimTiming = ClaimTiming.BeforeHandler, bool natural = false)
{
    var table = await BusinessTable();
    var queue = await Queue(count);
    var latencies = new Latencies();
    var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    var acked = 0;
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_" + Guid.NewGuid().ToString("N")[..8], OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8] });
    await store.EnsureSchemaAsync();
    IIdempotentMessageHandler handler = natural
        ? IdempotentHandler.Create((ctx, ct) =>
        {
            // The library's default: the ordinary per-message handler, batched by the consumer when deliveries wait.
            latencies.WorkStarted(ctx.GetNative<RabbitMqDelivery>().DeliveryTag);
            return new ValueTask(Upsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Key));
        })
        : IdempotentHandler.CreateBatch(
        async (ctx, ct) =>
        {
            // Set-based: one upsert for the whole batch, ids sorted so concurrent batches lock rows in the same order.
            foreach (var m in ctx.Messages)
            {
                latencies.WorkStarted(m.GetNative<RabbitMqDelivery>().DeliveryTag);
            }

            var ids = ctx.Messages.Select(m => m.Key).Order(StringComparer.Ordinal).ToArray();
            await using var command = new NpgsqlCommand(
                $"INSERT INTO {table} (id, amount, applied) SELECT id, 5, 1 FROM unnest(@ids) AS u(id) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
                ctx.Messages[0].GetNpgsqlConnection(),
                ctx.Messages[0].GetNpgsqlTransaction());
            command.Parameters.Add(new NpgsqlParameter("ids", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = ids });
            await command.ExecuteNonQueryAsync(ct);
        },
        (ctx, ct) =>
        {
            latencies.WorkStarted(ctx.GetNative<RabbitMqDelivery>().DeliveryTag);
            return new ValueTask(Upsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Key));
        });
    var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench", ClaimTiming = claimTiming });
    await using var raw = await connection.CreateChannelAsync();
    var channel = AckTap.Wrap(raw, tag =>
    {
        latencies.Acked(tag);
        if (Interlocked.Increment(ref acked) == count)
        {
            done.TrySetResult();
        }
    });
    var options = new RabbitMqIdempotencyOptions
    {
        Queue = queue,
        PrefetchCount = prefetch,
        Concurrency = concurrency,
        BatchSize = batch,
        BatchMaxWait = natural ? TimeSpan.Zero : TimeSpan.FromMilliseconds(5),
        KeySelector = ea =>
        {
            latencies.Delivered(ea.DeliveryTag);
            return ea.BasicProperties.MessageId;
        },
    };
    await using var consumer = new IdempotentRabbitMqConsumer(channel, processor, options);
    using var sampler = new WorkingSetSampler();
    var watch = Stopwatch.StartNew();
    await consumer.StartAsync();
    await done.Task.WaitAsync(TimeSpan.FromMinutes(5));
    var elapsed = watch.Elapsed;
    await consumer.StopAsync();
    await Verify(table, count, name);
    return latencies.Result(name, count, elapsed, sampler.PeakMb, $"Concurrency={concurrency}, BatchSize={batch}");
}

static async Task Upsert(NpgsqlConnection conn, NpgsqlTransaction tx, string table, string id)
{
    await using var command = new NpgsqlCommand($"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1", conn, tx);
    command.Parameters.AddWithValue("id", id);
    await command.ExecuteNonQueryAsync();
}

async Task<string> BusinessTable()
{
    var table = $"{schema}.accounts_{Guid.NewGuid().ToString("N")[..8]}";
    await Exec($"CREATE TABLE {table} (id text PRIMARY KEY, amount bigint NOT NULL DEFAULT 0, applied int NOT NULL DEFAULT 0)");
    return table;
}

async Task<string> KeyTable()
{
    var table = $"{schema}.keys_{Guid.NewGuid().ToString("N")[..8]}";
    await Exec($"CREATE TABLE {table} (key text PRIMARY KEY)");
    return table;
}

async Task<string> Queue(int count)
{
    var queue = $"idem.bench.{Guid.NewGuid():N}";
    queues.Add(queue);
    await admin.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, arguments: new Dictionary<string, object?> { ["x-queue-type"] = "classic" });
    var pending = new List<Task>(1_000);
    for (var i = 0; i < count; i++)
    {
        var id = "m-" + i.ToString(CultureInfo.InvariantCulture);
        pending.Add(admin.BasicPublishAsync(string.Empty, queue, mandatory: true, new BasicProperties { MessageId = id, Persistent = true }, Encoding.UTF8.GetBytes($"{{\"id\":\"{id}\",\"amount\":5}}")).AsTask());
        if (pending.Count == 1_000)
        {
            await Task.WhenAll(pending);
            pending.Clear();
        }
    }

    await Task.WhenAll(pending);
    return queue;
}

async Task Verify(string table, int count, string name)
{
    await using var conn = await dataSource.OpenConnectionAsync();
    await using var command = new NpgsqlCommand($"SELECT count(*) FROM {table} WHERE applied = 1", conn);
    var rows = (long)(await command.ExecuteScalarAsync())!;
    if (rows != count)
    {
        throw new InvalidOperationException($"{name}: expected {count} business rows applied once, found {rows}");
    }
}

async Task Exec(string sql)
{
    await using var conn = await dataSource.OpenConnectionAsync();
    await using var command = new NpgsqlCommand(sql, conn);
    await command.ExecuteNonQueryAsync();
}

int Arg(string name, int fallback)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : fallback;
}

static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

static string FindResultsDirectory()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !Directory.Exists(Path.Combine(dir.FullName, "benchmarks", "results")))
    {
        dir = dir.Parent;
    }

    return dir is null ? Directory.GetCurrentDirectory() : Path.Combine(dir.FullName, "benchmarks", "results");
}

internal sealed record Result(string Name, int Messages, double Seconds, double MessagesPerSecond, double P50Ms, double P99Ms, double WorkP50Ms, double WorkP99Ms, double PeakWorkingSetMb, string Settings)
{
    public string Rounds { get; init; } = string.Empty;
}

/// <summary>Delivery-to-ack latencies, keyed by delivery tag.</summary>
internal sealed class Latencies
{
    private readonly ConcurrentDictionary<ulong, long> _started = new();
    private readonly ConcurrentDictionary<ulong, long> _workStarted = new();
    private readonly ConcurrentBag<double> _samples = [];
    private readonly ConcurrentBag<double> _work = [];

    public void Delivered(ulong tag) => _started[tag] = Stopwatch.GetTimestamp();

    public void WorkStarted(ulong tag) => _workStarted[tag] = Stopwatch.GetTimestamp();

    public void Acked(ulong tag)
    {
        if (_started.TryRemove(tag, out var started))
        {
            _samples.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }

        if (_workStarted.TryRemove(tag, out var work))
        {
            _work.Add(Stopwatch.GetElapsedTime(work).TotalMilliseconds);
        }
    }

    public void Add(TimeSpan elapsed)
    {
        _samples.Add(elapsed.TotalMilliseconds);
        _work.Add(elapsed.TotalMilliseconds);
    }

    public Result Result(string name, int count, TimeSpan elapsed, double peakMb, string settings)
    {
        var sorted = _samples.Order().ToArray();
        var work = _work.Order().ToArray();
        static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(p * sorted.Length) - 1)];
        var result = new Result(name, count, elapsed.TotalSeconds, count / elapsed.TotalSeconds, Percentile(sorted, 0.50), Percentile(sorted, 0.99), Percentile(work, 0.50), Percentile(work, 0.99), peakMb, settings);
        Console.WriteLine($"  {name}: {result.MessagesPerSecond:N0} msg/s, p50 {result.P50Ms:0.00} ms, p99 {result.P99Ms:0.00} ms, work p50 {result.WorkP50Ms:0.00} ms, {peakMb:0} MB");
        return result;
    }
}

/// <summary>Samples the working set every 20 ms while a scenario runs.</summary>
internal sealed class WorkingSetSampler : IDisposable
{
    private readonly Timer _timer;
    private long _peak = Environment.WorkingSet;

    public WorkingSetSampler() => _timer = new Timer(_ => Sample(), null, 0, 20);

    public double PeakMb
    {
        get
        {
            Sample();
            return Interlocked.Read(ref _peak) / 1024.0 / 1024.0;
        }
    }

    public void Dispose() => _timer.Dispose();

    private void Sample()
    {
        var now = Environment.WorkingSet;
        long peak;
        while (now > (peak = Interlocked.Read(ref _peak)) && Interlocked.CompareExchange(ref _peak, now, peak) != peak)
        {
        }
    }
}

/// <summary>An IChannel that forwards everything and reports each completed basic.ack (same overhead for plain and ours).</summary>
public class AckTap : DispatchProxy
{
    private IChannel _inner = null!;
    private Action<ulong> _onAck = null!;

    public static IChannel Wrap(IChannel inner, Action<ulong> onAck)
    {
        var proxy = Create<IChannel, AckTap>();
        var tap = (AckTap)(object)proxy;
        tap._inner = inner;
        tap._onAck = onAck;
        return proxy;
    }

    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        object? result;
        try
        {
            result = targetMethod!.Invoke(_inner, args);
        }
        catch (TargetInvocationException e) when (e.InnerException is not null)
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e.InnerException);
            throw;
        }

        return targetMethod.Name == nameof(IChannel.BasicAckAsync) ? AfterAck((ValueTask)result!, (ulong)args![0]!) : result;
    }

    private async ValueTask AfterAck(ValueTask ack, ulong tag)
    {
        await ack;
        _onAck(tag);
    }
}
