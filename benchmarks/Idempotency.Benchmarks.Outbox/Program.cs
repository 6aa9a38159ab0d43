// Outbox benchmark, one run: for each broker, publishing N messages directly with the outbox publisher vs the
// PostgreSQL relay publishing the same N rows with the same publisher, then commit-to-publish latency with
// LISTEN/NOTIFY (one writer committing one message at a time while the relay runs with a 5 s poll interval).
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Confluent.Kafka;
using Dapper;
using Idempotency;
using Idempotency.Kafka.Outbox;
using Idempotency.Kafka.Tests;
using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.RabbitMQ.Outbox;
using Npgsql;
using RabbitMQ.Client;

var pg = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? throw new InvalidOperationException("Set IDEMPOTENCY_POSTGRES (scripts/services.sh up).");
var amqp = Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQ") ?? throw new InvalidOperationException("Set IDEMPOTENCY_RABBITMQ (scripts/services.sh up).");
var n = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 20_000;
var latencyMessages = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 400;
var defaultBatch = new PostgresOutboxRelayOptions().BatchSize;
var outDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "../../../../results"));
Directory.CreateDirectory(outDir);

var loadAtStart = LoadAverage();
await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(pg) { MaxPoolSize = 32 }.ConnectionString);
var schema = "bench_outbox_" + Guid.NewGuid().ToString("N")[..8];
await using (var c = await dataSource.OpenConnectionAsync())
{
    await c.ExecuteAsync($"CREATE SCHEMA {schema}");
}

var rows = new List<Row>();
try
{
    // RabbitMQ: a real broker, publisher confirms, persistent messages into a durable classic queue.
    var factory = new ConnectionFactory { Uri = new Uri(amqp) };
    await using (var connection = await factory.CreateConnectionAsync())
    {
        await using var admin = await connection.CreateChannelAsync();
        var queue = "bench-outbox-" + Guid.NewGuid().ToString("N")[..8];
        await admin.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
        await using (var publisher = new RabbitMqOutboxPublisher(connection))
        {
            rows.AddRange(await RunBrokerAsync("rabbitmq", queue, publisher, async () => await admin.QueuePurgeAsync(queue)));
        }

        await admin.QueueDeleteAsync(queue);
    }

    // Kafka: librdkafka's mock cluster in this process (no broker on this machine), idempotent producer, acks=all.
    using (var cluster = MockKafkaCluster.StartMock(3))
    {
        var topic = "bench-outbox";
        cluster.CreateTopic(topic, 6);
        using var publisher = new KafkaOutboxPublisher(new ProducerConfig { BootstrapServers = cluster.BootstrapServers, LingerMs = 2 });
        rows.AddRange(await RunBrokerAsync("kafka (mock)", topic, publisher, () => Task.CompletedTask));
    }
}
finally
{
    await using var c = await dataSource.OpenConnectionAsync();
    await c.ExecuteAsync($"DROP SCHEMA {schema} CASCADE");
}

var peak = Process.GetCurrentProcess().PeakWorkingSet64 / (1024.0 * 1024.0);
var load = LoadAverage();

var md = new StringBuilder();
md.AppendLine("# Outbox benchmark");
md.AppendLine();
md.AppendLine(CultureInfo.InvariantCulture, $"{DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, load average {loadAtStart:0.0} at the start and {load:0.0} at the end, {n:N0} messages per throughput scenario, {latencyMessages} for latency. PostgreSQL 15 and RabbitMQ 3.10 on loopback; Kafka is librdkafka's in-process mock cluster.");
md.AppendLine(CultureInfo.InvariantCulture, $"Command: `dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Outbox -- {n} {latencyMessages}`");
md.AppendLine();
md.AppendLine("| broker | scenario | msg/s | ratio to direct | p50 ms | p99 ms |");
md.AppendLine("|---|---|---:|---:|---:|---:|");
foreach (var row in rows)
{
    md.AppendLine(CultureInfo.InvariantCulture, $"| {row.Broker} | {row.Scenario} | {(row.Throughput > 0 ? row.Throughput.ToString("N0", CultureInfo.InvariantCulture) : "")} | {(row.Ratio > 0 ? row.Ratio.ToString("0.00", CultureInfo.InvariantCulture) + "x" : "")} | {(row.P50 >= 0 ? row.P50.ToString("0.0", CultureInfo.InvariantCulture) : "")} | {(row.P99 >= 0 ? row.P99.ToString("0.0", CultureInfo.InvariantCulture) : "")} |");
}

md.AppendLine();
md.AppendLine(CultureInfo.InvariantCulture, $"Peak working set: {peak:0} MB. Targets: relay >= 0.5x direct, p99 commit-to-publish < 100 ms.");
md.AppendLine();
md.AppendLine(CultureInfo.InvariantCulture, $"- direct: the same publisher, pre-built records in batches of 100 / {defaultBatch}, one batch at a time (what the relay calls).");
md.AppendLine(CultureInfo.InvariantCulture, $"- relay: N rows already committed in the outbox, one relay (batch 100 / {defaultBatch}, the default) reads with SKIP LOCKED, publishes, marks sent; timed until every row is marked. Its ratio is to the direct row of the same batch size.");
md.AppendLine(CultureInfo.InvariantCulture, $"- latency: one writer commits one message per transaction (a 5 ms pause between), the relay runs with default options (batch {defaultBatch}) but PollInterval 5 s, so only NOTIFY can make it fast; measured from the commit call's return to the broker's confirm.");
Console.WriteLine(md);
await File.WriteAllTextAsync(Path.Combine(outDir, "outbox.md"), md.ToString());
await File.WriteAllTextAsync(Path.Combine(outDir, "outbox.json"), JsonSerializer.Serialize(new { n, latencyMessages, cores = Environment.ProcessorCount, defaultBatch, loadAtStart, load, peakWorkingSetMb = peak, rows }, new JsonSerializerOptions { WriteIndented = true }));
return;

async Task<List<Row>> RunBrokerAsync(string broker, string destination, IOutboxPublisher publisher, Func<Task> reset)
{
    var result = new List<Row>();

    // Warm-up.
    await publisher.PublishAsync(Records(destination, 200), CancellationToken.None);
    await reset();

    // Direct, in the same batch sizes the relay uses (each relay row is compared with the direct row of its size).
    var records = Records(destination, n);
    var direct = new Dictionary<int, double>();
    var sw = new Stopwatch();
    foreach (var size in new[] { 100, defaultBatch })
    {
        sw.Restart();
        for (var i = 0; i < records.Count; i += size)
        {
            await publisher.PublishAsync(records.GetRange(i, Math.Min(size, records.Count - i)), CancellationToken.None);
        }

        direct[size] = n / sw.Elapsed.TotalSeconds;
        result.Add(new Row(broker, $"direct publish (batches of {size})", direct[size], 1, -1, -1));
        await reset();
    }

    foreach (var (batchSize, noop) in new[] { (defaultBatch, true), (100, false), (defaultBatch, false) })
    {
        var store = await NewStoreAsync();
        await FillAsync(store, destination, n);
        var relay = new PostgresOutboxRelay(store, noop ? new NoopPublisher() : publisher, new PostgresOutboxRelayOptions { BatchSize = batchSize, PollInterval = TimeSpan.FromSeconds(5) });
        sw.Restart();
        while (await relay.RelayOnceAsync() > 0)
        {
        }

        var relayed = n / sw.Elapsed.TotalSeconds;
        var pending = await Scalar($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL");
        if (pending != 0)
        {
            throw new InvalidOperationException($"{pending} rows left unsent");
        }

        var label = batchSize == defaultBatch ? $"batch {batchSize} (default)" : $"batch {batchSize}";
        result.Add(new Row(broker, noop ? $"relay, {label}, no-op publisher (PostgreSQL side only)" : $"relay, {label}", relayed, relayed / direct[batchSize], -1, -1));
        await reset();
    }

    // RunAsync as a host runs it: several batches in flight (Workers), draining the same backlog.
    foreach (var workers in new[] { new PostgresOutboxRelayOptions().Workers, 4 })
    {
        var store = await NewStoreAsync();
        await FillAsync(store, destination, n);
        var relay = new PostgresOutboxRelay(store, publisher, new PostgresOutboxRelayOptions { PollInterval = TimeSpan.FromSeconds(5), Workers = workers });
        using var stop = new CancellationTokenSource();
        sw.Restart();
        var run = relay.RunAsync(stop.Token);
        while (await Scalar($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL") > 0)
        {
            await Task.Delay(10);
        }

        var relayed = n / sw.Elapsed.TotalSeconds;
        await stop.CancelAsync();
        await run;
        result.Add(new Row(broker, $"relay, batch {defaultBatch} (default), RunAsync with {workers} workers{(workers == new PostgresOutboxRelayOptions().Workers ? " (default)" : string.Empty)}", relayed, relayed / direct[defaultBatch], -1, -1));
        await reset();
    }

    // Commit-to-publish latency with LISTEN/NOTIFY.
    {
        var store = await NewStoreAsync();
        var clock = Stopwatch.StartNew();
        var confirmed = new System.Collections.Concurrent.ConcurrentDictionary<string, TimeSpan>();
        var timing = new TimingPublisher(publisher, clock, confirmed);
        // Default options (batch size included) but for the poll interval.
        var relay = new PostgresOutboxRelay(store, timing, new PostgresOutboxRelayOptions { PollInterval = TimeSpan.FromSeconds(5) });
        using var stop = new CancellationTokenSource();
        var run = relay.RunAsync(stop.Token);
        var processor = Sender(store, destination);
        await processor.ProcessAsync(new IncomingMessage("warm", "x"u8.ToArray()));
        var deadline = Stopwatch.StartNew();
        while (!confirmed.ContainsKey("warm") && deadline.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(10);
        }

        var committedAt = new Dictionary<string, TimeSpan>();
        for (var i = 0; i < latencyMessages; i++)
        {
            var key = "m" + i.ToString(CultureInfo.InvariantCulture);
            await processor.ProcessAsync(new IncomingMessage(key, Encoding.UTF8.GetBytes(key)));
            committedAt[key] = clock.Elapsed;
            await Task.Delay(5);
        }

        deadline.Restart();
        while (!committedAt.Keys.All(confirmed.ContainsKey) && deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            await Task.Delay(10);
        }

        await stop.CancelAsync();
        await run;
        var lags = committedAt.Where(kv => confirmed.ContainsKey(kv.Key)).Select(kv => Math.Max(0, (confirmed[kv.Key] - kv.Value).TotalMilliseconds)).Order().ToList();
        if (lags.Count != committedAt.Count)
        {
            throw new InvalidOperationException($"{committedAt.Count - lags.Count} messages never confirmed");
        }

        result.Add(new Row(broker, "commit-to-publish latency (NOTIFY, poll 5 s)", -1, -1, Percentile(lags, 0.50), Percentile(lags, 0.99)));
        await reset();
    }

    return result;
}

List<OutboxRecord> Records(string destination, int count) => Enumerable.Range(0, count)
    .Select(i => new OutboxRecord(i, Guid.NewGuid(), destination, "key-" + (i % 64).ToString(CultureInfo.InvariantCulture), Encoding.UTF8.GetBytes($"{{\"order\":{i},\"amount\":5}}"), null, DateTimeOffset.UtcNow))
    .ToList();

async Task<PostgresIdempotencyStore> NewStoreAsync()
{
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "p_" + Guid.NewGuid().ToString("N")[..8], OutboxTable = "o_" + Guid.NewGuid().ToString("N")[..8] });
    await store.EnsureSchemaAsync();
    return store;
}

async Task FillAsync(PostgresIdempotencyStore store, string destination, int count)
{
    // Rows written the way handlers write them: 100 messages per processor batch, one outgoing message each.
    var processor = Sender(store, destination);
    for (var i = 0; i < count; i += 100)
    {
        var batch = Enumerable.Range(i, Math.Min(100, count - i)).Select(k => new IncomingMessage("in-" + k.ToString(CultureInfo.InvariantCulture), Encoding.UTF8.GetBytes($"{{\"order\":{k},\"amount\":5}}"))).ToList();
        await processor.ProcessBatchAsync(batch);
    }
}

IdempotentProcessor Sender(PostgresIdempotencyStore store, string destination) => new(store, IdempotentHandler.Create((context, _) =>
{
    context.AddOutgoing(new OutboxMessage(destination, context.Key, context.Body));
    return ValueTask.CompletedTask;
}), new IdempotencyOptions { HandlerName = "bench" });

async Task<long> Scalar(string sql)
{
    await using var c = await dataSource.OpenConnectionAsync();
    return await c.ExecuteScalarAsync<long>(sql);
}

static double LoadAverage()
{
    try
    {
        return double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture);
    }
    catch (IOException)
    {
        return 0;
    }
}

static double Percentile(List<double> sorted, double p) => sorted.Count == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Count) - 1, 0, sorted.Count - 1)];

internal sealed record Row(string Broker, string Scenario, double Throughput, double Ratio, double P50, double P99);

internal sealed class NoopPublisher : IOutboxPublisher
{
    public ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}

/// <summary>Records when the broker confirmed each message (by its key).</summary>
internal sealed class TimingPublisher(IOutboxPublisher inner, Stopwatch clock, System.Collections.Concurrent.ConcurrentDictionary<string, TimeSpan> confirmed) : IOutboxPublisher
{
    public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
    {
        await inner.PublishAsync(messages, cancellationToken);
        var now = clock.Elapsed;
        foreach (var message in messages)
        {
            confirmed.TryAdd(message.Key, now);
        }
    }
}
