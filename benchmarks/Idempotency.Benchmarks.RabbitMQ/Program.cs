// RabbitMQ benchmark, in ONE run with interleaved rounds: a plain manual-ack consumer, IdempotentRabbitMqConsumer
// (default options, batching off with the claim before the handler and at commit, a set-based batch handler), the
// hand-written idempotent consumers a user would compare with (the plain consumer plus a key-row insert per message, and
// plus a 100-key batch transaction), the peer (Wolverine's durable inbox, a child process:
// benchmarks/Idempotency.Benchmarks.Wolverine) and the broker-free PostgreSQL SQL loops (context), all doing the same
// business upsert at the same prefetch and concurrency.
//   dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.RabbitMQ -- [--messages 2000] [--rounds 3]
//     [--concurrency 4] [--prefetch 200] [--batch 100] [--low-load 200] [--no-peer]
// Reads IDEMPOTENCY_POSTGRES and IDEMPOTENCY_RABBITMQ. Writes benchmarks/results/rabbitmq.md and rabbitmq.json.
//
// Every number comes from the same place: the business table's deferred trigger (CommitClock) stamps each effect with
// clock_timestamp() at its transaction's commit. Throughput = messages committed after the first commit / time from the
// first to the last commit; latency = that commit stamp - the publisher's clock just before basic.publish (same host
// clock); effects == unique is counted from the table after every run.
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Idempotency;
using Idempotency.Benchmarks.RabbitMQ;
using Idempotency.Benchmarks.Shared;
using Idempotency.InMemory;
using Idempotency.Storage;
using Idempotency.Postgres;
using Idempotency.RabbitMQ;
using Npgsql;
using NpgsqlTypes;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var messages = Arg("--messages", 2_000); // per scenario per round
var concurrency = Arg("--concurrency", 4);
var prefetch = Arg("--prefetch", 200);
var batchSize = Arg("--batch", 100);
var rounds = Arg("--rounds", 3);
var lowLoad = Arg("--low-load", 200); // messages per scenario per round, one in flight
var peer = !args.Contains("--no-peer");
var sqlSeconds = Arg("--sql-seconds", 2);
var batchLingerMs = Arg("--batch-linger-ms", 0); // batch mode's BatchMaxWait
var batchPrefetch = Arg("--batch-prefetch", Math.Max(prefetch, batchSize * concurrency)); // batch mode's PrefetchCount
var only = ArgText("--only")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); // scenario keys, for a quick look at a few
var diagnose = args.Contains("--diagnose"); // adds the rows that split a batch's cost: broker and client alone, our path without the broker, and over the in-memory store
long batchHandlerCalls = 0; // set-based handler calls: messages / calls = the mean batch size
const int WarmUp = 100; // messages before each broker run's measured ones (JIT, pools, Wolverine's code generation)
var postgres = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? "Host=127.0.0.1;Port=5432;Username=app;Password=app;Database=appdb";
var rabbit = Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQ") ?? "amqp://guest:guest@127.0.0.1:5672/";

var schema = "bench_rmq_" + Guid.NewGuid().ToString("N")[..8];
await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(postgres) { MaxPoolSize = 64 }.ConnectionString);
var sql = new CommitClock(dataSource, schema);
await sql.ExecAsync($"CREATE SCHEMA {schema}");
var factory = new ConnectionFactory { Uri = new Uri(rabbit), AutomaticRecoveryEnabled = true, ClientProvidedName = "bench" };
await using var connection = await factory.CreateConnectionAsync();
await using var publishConnection = await factory.CreateConnectionAsync();
var queues = new List<string>();
var loadStart = LoadAverage();
var throughputRows = new List<Row>();
var lowLoadRows = new List<Row>();
var started = DateTime.UtcNow;
try
{
    Console.WriteLine($"load average at start: {loadStart}");
    Console.WriteLine($"RabbitMQ benchmark: {messages} messages per scenario per round, {rounds} rounds, prefetch {prefetch}, concurrency {concurrency}, batch {batchSize}, low load {lowLoad} one at a time, {Environment.ProcessorCount} cores, peer {(peer ? "on" : "off")}");

    var throughput = new List<(string Key, string Name, Func<int, Task<Run>> Run)>
    {
        ("sql-plain", "Broker-free SQL loop: plain transaction (upsert + commit)", _ => SqlLoop(keyRows: 0)),
        ("sql-key", "Broker-free SQL loop: plain transaction + key-row insert", _ => SqlLoop(keyRows: 1)),
        ("sql-batch", $"Broker-free SQL loop: {batchSize}-key batch transaction (key rows + set-based upsert)", _ => SqlLoop(keyRows: batchSize)),
        ("plain", "Plain manual-ack consumer, own transaction per message", n => Plain(n, oneAtATime: false)),
        ("hand-key", "Hand-written: plain consumer + key-row insert per message", n => Plain(n, oneAtATime: false, keyRow: true)),
        ("hand-batch", $"Hand-written: plain consumer + {batchSize}-key batch transaction", HandBatch),
        ("default", "IdempotentRabbitMqConsumer, default batching (per-message handler)", n => Ours(n, Mode.Default, oneAtATime: false)),
        ("per-message", "IdempotentRabbitMqConsumer, batching off (BatchSize 1), claim before handler", n => Ours(n, Mode.PerMessage, oneAtATime: false)),
        ("at-commit", "IdempotentRabbitMqConsumer, batching off, claim at commit", n => Ours(n, Mode.AtCommit, oneAtATime: false)),
        ("set-based", $"IdempotentRabbitMqConsumer, batch mode ({batchSize}), set-based handler", n => Ours(n, Mode.SetBased, oneAtATime: false)),
    };
    var latency = new List<(string Key, string Name, Func<int, Task<Run>> Run)>
    {
        ("plain", "Plain manual-ack consumer", n => Plain(n, oneAtATime: true)),
        ("default", "IdempotentRabbitMqConsumer, default batching", n => Ours(n, Mode.Default, oneAtATime: true)),
        ("per-message", "IdempotentRabbitMqConsumer, batching off", n => Ours(n, Mode.PerMessage, oneAtATime: true)),
    };
    if (diagnose)
    {
        throughput.Add(("consume-only", "Diagnosis: bare manual-ack consumer, no database (broker + client)", n => ConsumeOnly(n, ackEvery: 1)));
        throughput.Add(("consume-only-multiple", $"Diagnosis: bare consumer acking every {batchSize} with multiple: true, no database", n => ConsumeOnly(n, ackEvery: batchSize)));
        throughput.Add(("memory-set-based", $"Diagnosis: batch mode ({batchSize}) over the in-memory store (no database)", n => Ours(n, Mode.SetBased, oneAtATime: false, inMemory: true)));
        throughput.Add(("alone-set-based", $"Diagnosis: IdempotentProcessor.ProcessBatchAsync alone, batches of {batchSize}, set-based handler (no broker)", _ => ProcessorAlone()));
    }

    if (peer)
    {
        throughput.Add(("wolverine", "Wolverine 6.64.2 durable inbox (PostgreSQL), EF Core handler in the inbox transaction", n => Wolverine(n, oneAtATime: false)));
        latency.Add(("wolverine", "Wolverine durable inbox", n => Wolverine(n, oneAtATime: true)));
    }

    if (only is not null)
    {
        throughput.RemoveAll(s => !only.Contains(s.Key));
        latency.RemoveAll(s => !only.Contains("low-" + s.Key));
    }

    if (lowLoad <= 0)
    {
        latency.Clear(); // --low-load 0: no low-load runs (a run of no measured messages has no commit stamps)
    }

    // Warm-up (JIT, pools, broker): one full round of the in-process scenarios, not reported. The JIT recompiles hot
    // code at its optimizing tier during the first thousands of messages (thousands of methods in the library's path,
    // few in a hand-written loop); a long-running consumer pays that once at start-up, not per message.
    foreach (var s in throughput.Where(s => s.Key != "wolverine"))
    {
        await s.Run(messages);
    }

    var tput = throughput.Select(_ => new List<Run>()).ToArray();
    var lat = latency.Select(_ => new List<Run>()).ToArray();
    for (var round = 1; round <= rounds; round++)
    {
        Console.WriteLine($"round {round}/{rounds}, load average {LoadAverage()}");
        for (var i = 0; i < throughput.Count; i++)
        {
            tput[i].Add(await throughput[i].Run(messages));
        }

        for (var i = 0; i < latency.Count; i++)
        {
            lat[i].Add(await latency[i].Run(lowLoad));
        }
    }

    for (var i = 0; i < throughput.Count; i++)
    {
        var median = tput[i].OrderBy(r => r.MessagesPerSecond).ElementAt(tput[i].Count / 2);
        throughputRows.Add(new Row(throughput[i].Key, throughput[i].Name, median.MessagesPerSecond, median.P50Ms, median.P99Ms, Median(tput[i].Select(r => r.ClientCpuMicroseconds)), tput[i].Sum(r => r.Messages), string.Join(" / ", tput[i].Select(r => r.MessagesPerSecond.ToString("N0")))));
    }

    for (var i = 0; i < latency.Count; i++)
    {
        // Low load: every round's samples pooled, then p50/p99 of them all.
        var samples = lat[i].SelectMany(r => r.LatenciesMs).Order().ToArray();
        lowLoadRows.Add(new Row(latency[i].Key, latency[i].Name, Median(lat[i].Select(r => r.MessagesPerSecond)), Percentile(samples, 0.50), Percentile(samples, 0.99), Median(lat[i].Select(r => r.ClientCpuMicroseconds)), samples.Length, string.Join(" / ", lat[i].Select(r => $"{r.P99Ms:0.0}"))));
    }
}
finally
{
    await using (var admin = await connection.CreateChannelAsync())
    {
        foreach (var queue in queues)
        {
            await admin.QueueDeleteAsync(queue, ifUnused: false, ifEmpty: false);
        }
    }

    await sql.ExecAsync($"DROP SCHEMA {schema} CASCADE");
}

var loadEnd = LoadAverage();
Report();
return;

// ---------------------------------------------------------------------------------------------------------------

void Report()
{
    double Rate(string key) => throughputRows.FirstOrDefault(r => r.Key == key)?.MessagesPerSecond ?? double.NaN;
    Row? LowLoad(string key) => lowLoadRows.FirstOrDefault(r => r.Key == key);
    double Cpu(string key) => throughputRows.FirstOrDefault(r => r.Key == key)?.ClientCpuMicroseconds ?? double.NaN;
    var ratios = new List<Ratio>
    {
        new("default / plain", Rate("default") / Rate("plain"), 1.0, ">="),
        new("batching off (claim before handler) / plain", Rate("per-message") / Rate("plain"), null, ">="),
        new("batching off (claim at commit) / plain", Rate("at-commit") / Rate("plain"), null, ">="),
        new("batching off (claim before handler) / hand-written key-row consumer", Rate("per-message") / Rate("hand-key"), 0.95, ">="),
        new("batching off (claim at commit) / hand-written key-row consumer", Rate("at-commit") / Rate("hand-key"), 0.95, ">="),
        new($"set-based batch / hand-written {batchSize}-key batch consumer", Rate("set-based") / Rate("hand-batch"), 0.8, ">="),
        new("batching off (claim before handler) / broker-free SQL loop: plain transaction + key-row insert (context: includes no broker)", Rate("per-message") / Rate("sql-key"), null, ">="),
        new("batching off (claim at commit) / broker-free SQL loop: plain transaction + key-row insert (context: includes no broker)", Rate("at-commit") / Rate("sql-key"), null, ">="),
        new($"set-based batch / broker-free {batchSize}-key SQL loop (context: includes no broker)", Rate("set-based") / Rate("sql-batch"), null, ">="),
        new("hand-written key-row consumer / broker-free SQL loop: plain transaction + key-row insert (what the broker costs)", Rate("hand-key") / Rate("sql-key"), null, ">="),
        new($"hand-written batch consumer / broker-free {batchSize}-key SQL loop (what the broker costs)", Rate("hand-batch") / Rate("sql-batch"), null, ">="),
        new("plain consumer / broker-free SQL loop: plain transaction", Rate("plain") / Rate("sql-plain"), null, ">="),
        new("client CPU per message: default / plain", Cpu("default") / Cpu("plain"), 1.0, "<="),
        new("client CPU per message: batching off / plain", Cpu("per-message") / Cpu("plain"), null, "<="),
        new("client CPU per message: batching off / hand-written key-row consumer", Cpu("per-message") / Cpu("hand-key"), null, "<="),
        new("client CPU per message: set-based batch / hand-written batch consumer", Cpu("set-based") / Cpu("hand-batch"), null, "<="),
    };
    if (peer)
    {
        ratios.Insert(1, new("default / Wolverine durable inbox", Rate("default") / Rate("wolverine"), 3.0, ">="));
        ratios.Insert(2, new("plain / Wolverine durable inbox", Rate("plain") / Rate("wolverine"), null, ">="));
        ratios.Insert(5, new("batching off (claim before handler) / Wolverine durable inbox", Rate("per-message") / Rate("wolverine"), null, ">="));
    }

    if (LowLoad("plain") is { } lp && LowLoad("default") is { } ld)
    {
        ratios.Add(new("low load: default p99 - plain p99 (ms)", ld.P99Ms - lp.P99Ms, 2.0, "<="));
    }

    var md = new StringBuilder();
    md.AppendLine(CultureInfo.InvariantCulture, $"# RabbitMQ benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    md.AppendLine();
    md.AppendLine(CultureInfo.InvariantCulture, $"`--messages {messages} --rounds {rounds} --low-load {lowLoad}`: {rounds} interleaved rounds after one unreported warm-up round of the in-process scenarios; prefetch {prefetch}; concurrency {concurrency} for every scenario (plain and the hand-written key-row consumer: ConsumerDispatchConcurrency; ours: Concurrency; hand-written batch consumer: workers; Wolverine: MaximumParallelMessages; SQL loops: connections); batch size {batchSize} (set-based batch mode and the hand-written batch consumer: prefetch {batchPrefetch}, so that every worker's batch can fill; linger {batchLingerMs} ms); persistent messages with GUID ids on a classic queue; PostgreSQL and RabbitMQ on loopback; {Environment.ProcessorCount} cores. Machine load average: {loadStart} at the start, {loadEnd} at the end ({(DateTime.UtcNow - started).TotalMinutes:0.0} min).");
    md.AppendLine();
    md.AppendLine(CultureInfo.InvariantCulture, $"Every scenario does the same business write (an upsert of the message's row) and is measured from the same place: a deferred trigger on the business table stamps each effect with `clock_timestamp()` at its transaction's commit. Throughput runs: the round's messages (after 100 warm-up ones) are in the queue before the consumer starts; msgs/s = messages committed after the first commit / (last commit - first commit). Hand-written rows: the plain consumer (same channel, prefetch and concurrency) made idempotent by hand, the baselines of the batching-off and set-based targets: `BEGIN; INSERT INTO keys (key) VALUES (@id) ON CONFLICT DO NOTHING;` the same upsert if a row was inserted, `COMMIT`, then `basic.ack`; and {batchSize}-key batches taken from what is ready (the set-based scenario's prefetch, worker count and linger), one transaction each (the key rows from `unnest` in order, then the set-based upsert), then one `basic.ack(multiple: true)` where every lower tag is settled, single acks otherwise. Broker-free SQL rows (context, no target): a C# loop of the same transactions on the same number of connections for --sql-seconds, rows / wall time. Latency (publish -> effect committed = commit stamp - the publisher's clock just before `basic.publish`, the same host clock) is measured in the low-load run, where it is not queue wait. Effects == messages (every row applied exactly once) and an empty queue are checked after every run.");
    md.AppendLine();
    md.AppendLine("## Throughput (median round by msgs/s)");
    md.AppendLine();
    md.AppendLine("| scenario | msgs/s | client CPU µs/msg | messages (all rounds) | rounds msgs/s |");
    md.AppendLine("|---|---:|---:|---:|---|");
    foreach (var r in throughputRows)
    {
        var cpu = r.Key.StartsWith("sql", StringComparison.Ordinal) || r.Key == "wolverine" ? "-" : r.ClientCpuMicroseconds.ToString("0");
        md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.MessagesPerSecond:N0} | {cpu} | {r.Messages:N0} | {r.Rounds} |");
    }

    md.AppendLine();
    md.AppendLine("Client CPU: this process's CPU time (Process.TotalProcessorTime) from the consumer's start to the last effect / messages (median round). Wolverine runs in its own process (not measured).");
    md.AppendLine();
    md.AppendLine(CultureInfo.InvariantCulture, $"## Low load: one message in flight ({lowLoad} per scenario per round, all rounds pooled)");
    md.AppendLine();
    md.AppendLine("| scenario | p50 ms | p99 ms | samples | p99 per round ms |");
    md.AppendLine("|---|---:|---:|---:|---|");
    foreach (var r in lowLoadRows)
    {
        md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.P50Ms:0.00} | {r.P99Ms:0.00} | {r.Messages} | {r.Rounds} |");
    }

    md.AppendLine();
    md.AppendLine("## Ratios");
    md.AppendLine();
    md.AppendLine("| ratio | value | target | met |");
    md.AppendLine("|---|---:|---:|---|");
    foreach (var r in ratios)
    {
        var met = r.Target is not { } t ? "-" : (r.Direction == ">=" ? r.Value >= t : r.Value <= t) ? "yes" : "NO";
        md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Value:0.00} | {(r.Target is { } tt ? $"{r.Direction} {tt:0.##}" : "-")} | {met} |");
    }

    Console.WriteLine();
    Console.WriteLine(md.ToString());
    var resultsDir = FindResultsDirectory();
    File.WriteAllText(Path.Combine(resultsDir, "rabbitmq.md"), md.ToString());
    File.WriteAllText(Path.Combine(resultsDir, "rabbitmq.json"), JsonSerializer.Serialize(
        new { date = DateTime.UtcNow, messages, rounds, lowLoadMessages = lowLoad, prefetch, concurrency, batchSize, cores = Environment.ProcessorCount, loadStart, loadEnd, throughput = throughputRows, lowLoad = lowLoadRows, ratios },
        new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
    Console.WriteLine($"Written to {resultsDir}/rabbitmq.md and rabbitmq.json");
}

// The SQL baselines: `concurrency` connections, each a loop of transactions doing the business upsert (+ key rows), for
// --sql-seconds; msgs/s = rows committed / wall time (no broker).
async Task<Run> SqlLoop(int keyRows)
{
    var table = await sql.BusinessTableAsync(notify: false);
    var keys = keyRows > 0 ? await sql.KeyTableAsync() : null;
    var perTx = Math.Max(1, keyRows);
    var next = -perTx;
    var stopAt = Stopwatch.GetTimestamp() + (long)(sqlSeconds * Stopwatch.Frequency);
    var cpu = Process.GetCurrentProcess().TotalProcessorTime;
    var watch = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
    {
        await using var conn = await dataSource.OpenConnectionAsync();
        while (Stopwatch.GetTimestamp() < stopAt)
        {
            var first = Interlocked.Add(ref next, perTx);
            var ids = Enumerable.Range(first, perTx).Select(i => "s-" + i.ToString("D8")).ToArray();
            await using var tx = await conn.BeginTransactionAsync();
            if (keyRows == 1)
            {
                await using var claim = new NpgsqlCommand($"INSERT INTO {keys} (key) VALUES (@id) ON CONFLICT DO NOTHING", conn, tx);
                claim.Parameters.AddWithValue("id", ids[0]);
                await claim.ExecuteNonQueryAsync();
                await Upsert(conn, tx, table, ids[0]);
            }
            else if (keyRows > 1)
            {
                await using var claim = new NpgsqlCommand($"INSERT INTO {keys} (key) SELECT k FROM unnest(@ids) AS k ORDER BY k ON CONFLICT DO NOTHING", conn, tx);
                claim.Parameters.Add(new NpgsqlParameter("ids", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = ids });
                await claim.ExecuteNonQueryAsync();
                await SetBasedUpsert(conn, tx, table, ids);
            }
            else
            {
                await Upsert(conn, tx, table, ids[0]);
            }

            await tx.CommitAsync();
        }
    })));
    var elapsed = watch.Elapsed.TotalSeconds;
    await using var conn = await dataSource.OpenConnectionAsync();
    await using var rows = new NpgsqlCommand($"SELECT count(*) FROM {table}", conn);
    var committed = (long)(await rows.ExecuteScalarAsync())!;
    var cpuUs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMicroseconds / committed;
    var run = new Run((int)committed, committed / elapsed, double.NaN, double.NaN, cpuUs, []);
    Console.WriteLine($"  sql({keyRows}): {run.MessagesPerSecond:N0} msg/s, client CPU {cpuUs:0} µs/msg");
    return run;
}

// The plain consumer; with keyRow, the hand-written idempotent consumer a user would write instead: the same consumer
// with a key-row insert in the business transaction (3 round trips, like the SQL loop), the write skipped for a known key.
async Task<Run> Plain(int count, bool oneAtATime, bool keyRow = false)
{
    var name = keyRow ? "hand-key" : "plain";
    var table = await sql.BusinessTableAsync(notify: oneAtATime);
    var keys = keyRow ? await sql.KeyTableAsync() : null;
    var queue = await DeclareQueue();
    var published = await Preload(queue, count, oneAtATime);
    await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: false, publisherConfirmationTrackingEnabled: false, consumerDispatchConcurrency: (ushort)concurrency));
    await channel.BasicQosAsync(0, (ushort)prefetch, false);
    var consumer = new AsyncEventingBasicConsumer(channel);
    consumer.ReceivedAsync += async (_, ea) =>
    {
        await using (var conn = await dataSource.OpenConnectionAsync())
        await using (var tx = await conn.BeginTransactionAsync())
        {
            var id = ea.BasicProperties.MessageId!;
            var isNew = true;
            if (keys is not null)
            {
                await using var claim = new NpgsqlCommand($"INSERT INTO {keys} (key) VALUES (@id) ON CONFLICT DO NOTHING", conn, tx);
                claim.Parameters.AddWithValue("id", id);
                isNew = await claim.ExecuteNonQueryAsync() == 1;
            }

            if (isNew)
            {
                await Upsert(conn, tx, table, id);
            }

            await tx.CommitAsync();
        }

        await channel.BasicAckAsync(ea.DeliveryTag, multiple: false);
    };
    var cpu = Process.GetCurrentProcess().TotalProcessorTime;
    var tag = await channel.BasicConsumeAsync(queue, autoAck: false, consumer);
    var cpuUs = await Drive(queue, table, count, oneAtATime, published, cpu, name);
    await channel.BasicCancelAsync(tag);
    return await Finish(queue, table, count, published, cpuUs, name);
}

// The hand-written batch consumer: the set-based scenario's prefetch on one channel whose deliveries go to a buffer;
// `concurrency` workers each take up to --batch of what is ready (waiting up to --batch-linger-ms for more, like
// BatchMaxWait), run the SQL loop's batch transaction (key rows, then the set-based upsert of the new ones) and ack.
async Task<Run> HandBatch(int count)
{
    var table = await sql.BusinessTableAsync(notify: false);
    var keys = await sql.KeyTableAsync();
    var queue = await DeclareQueue();
    var published = await Preload(queue, count, oneAtATime: false);
    await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: false, publisherConfirmationTrackingEnabled: false));
    await channel.BasicQosAsync(0, (ushort)batchPrefetch, false);
    var buffer = System.Threading.Channels.Channel.CreateUnbounded<(ulong Tag, string Id)>(new() { SingleWriter = true });
    var consumer = new AsyncEventingBasicConsumer(channel);
    consumer.ReceivedAsync += (_, ea) =>
    {
        buffer.Writer.TryWrite((ea.DeliveryTag, ea.BasicProperties.MessageId!));
        return Task.CompletedTask;
    };
    var acks = new HandWrittenAcks(channel);
    long batches = 0;
    async Task Worker()
    {
        var batch = new List<(ulong Tag, string Id)>(batchSize);
        while (await buffer.Reader.WaitToReadAsync())
        {
            batch.Clear();
            while (batch.Count < batchSize && buffer.Reader.TryRead(out var delivery))
            {
                batch.Add(delivery);
            }

            if (batchLingerMs > 0 && batch.Count < batchSize)
            {
                using var linger = new CancellationTokenSource(batchLingerMs);
                try
                {
                    while (batch.Count < batchSize && await buffer.Reader.WaitToReadAsync(linger.Token))
                    {
                        while (batch.Count < batchSize && buffer.Reader.TryRead(out var delivery))
                        {
                            batch.Add(delivery);
                        }
                    }
                }
                catch (OperationCanceledException)
                {
                }
            }

            if (batch.Count == 0)
            {
                continue;
            }

            Interlocked.Increment(ref batches);
            await BatchTransaction(table, keys, batch.Select(d => d.Id).ToArray());
            await acks.AckAsync(batch.Select(d => d.Tag).ToArray());
        }
    }

    var cpu = Process.GetCurrentProcess().TotalProcessorTime;
    var workers = Enumerable.Range(0, concurrency).Select(_ => Task.Run(Worker)).ToArray();
    var tag = await channel.BasicConsumeAsync(queue, autoAck: false, consumer);
    var cpuUs = await Drive(queue, table, count, oneAtATime: false, published, cpu, "hand-batch");
    await channel.BasicCancelAsync(tag);
    buffer.Writer.TryComplete();
    await Task.WhenAll(workers);
    Console.WriteLine($"  mean hand-written batch: {(double)(WarmUp + count) / Math.Max(1, batches):0.0} messages");
    return await Finish(queue, table, count, published, cpuUs, "hand-batch");
}

// One batch transaction of a hand-written consumer: the broker-free batch loop's two statements when every key is new
// (always, in this benchmark); when some are known, the transaction is redone writing only the new keys' rows.
async Task BatchTransaction(string table, string keys, string[] ids)
{
    await using var conn = await dataSource.OpenConnectionAsync();
    await using (var tx = await conn.BeginTransactionAsync())
    {
        await using var claim = new NpgsqlCommand($"INSERT INTO {keys} (key) SELECT k FROM unnest(@ids) AS k ORDER BY k ON CONFLICT DO NOTHING", conn, tx);
        claim.Parameters.Add(new NpgsqlParameter("ids", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = ids });
        var inserted = await claim.ExecuteNonQueryAsync();
        if (inserted == ids.Length)
        {
            await SetBasedUpsert(conn, tx, table, ids);
        }

        if (inserted == ids.Length || inserted == 0)
        {
            await tx.CommitAsync();
            return;
        }
    }

    await using (var tx = await conn.BeginTransactionAsync())
    {
        await using var claim = new NpgsqlCommand($"INSERT INTO {keys} (key) SELECT k FROM unnest(@ids) AS k ORDER BY k ON CONFLICT DO NOTHING RETURNING key", conn, tx);
        claim.Parameters.Add(new NpgsqlParameter("ids", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = ids });
        var fresh = new List<string>();
        await using (var reader = await claim.ExecuteReaderAsync())
        {
            while (await reader.ReadAsync())
            {
                fresh.Add(reader.GetString(0));
            }
        }

        if (fresh.Count > 0)
        {
            await SetBasedUpsert(conn, tx, table, [.. fresh]);
        }

        await tx.CommitAsync();
    }
}

async Task<Run> Ours(int count, Mode mode, bool oneAtATime, bool inMemory = false)
{
    var table = await sql.BusinessTableAsync(notify: oneAtATime);
    var queue = await DeclareQueue();
    var published = await Preload(queue, count, oneAtATime);
    IIdempotencyStore store;
    if (inMemory)
    {
        store = new InMemoryIdempotencyStore();
    }
    else
    {
        var postgresStore = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_" + Guid.NewGuid().ToString("N")[..8], OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8] });
        await postgresStore.EnsureSchemaAsync();
        store = postgresStore;
    }

    var perMessage = IdempotentHandler.Create((ctx, ct) => new ValueTask(Upsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Key)));
    batchHandlerCalls = 0;
    IIdempotentMessageHandler handler = mode == Mode.SetBased
        ? IdempotentHandler.CreateBatch(
            async (ctx, ct) =>
            {
                Interlocked.Increment(ref batchHandlerCalls);
                if (!inMemory)
                {
                    await SetBasedUpsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Messages.Select(m => m.Key).ToArray());
                }
            },
            (ctx, ct) => inMemory ? ValueTask.CompletedTask : new ValueTask(Upsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Key)))
        : perMessage;
    var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench", ClaimTiming = mode == Mode.AtCommit ? ClaimTiming.AtCommit : ClaimTiming.BeforeHandler });
    await using var channel = await connection.CreateChannelAsync();
    var options = new RabbitMqIdempotencyOptions
    {
        Queue = queue,
        PrefetchCount = prefetch,
        Concurrency = concurrency,
        KeySelector = ea => ea.BasicProperties.MessageId,
    };
    if (mode is Mode.PerMessage or Mode.AtCommit)
    {
        options.BatchSize = 1;
    }
    else if (mode == Mode.SetBased)
    {
        // Batch mode wants every worker's batch full: at least BatchSize x Concurrency deliveries in flight.
        options.BatchSize = batchSize;
        options.PrefetchCount = batchPrefetch;
        options.BatchMaxWait = TimeSpan.FromMilliseconds(batchLingerMs);
    }

    // Mode.Default keeps BatchSize and BatchMaxWait at the library's defaults.
    await using var consumer = new IdempotentRabbitMqConsumer(channel, processor, options);
    var cpu = Process.GetCurrentProcess().TotalProcessorTime;
    if (inMemory)
    {
        // No business table: time from the start to the last ack.
        var watch = Stopwatch.StartNew();
        await consumer.StartAsync();
        while (consumer.AcknowledgedCount < WarmUp + count)
        {
            await Task.Delay(1);
        }

        var elapsed = watch.Elapsed.TotalSeconds;
        var cpuMemory = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMicroseconds / (WarmUp + count);
        await consumer.StopAsync();
        var memoryRun = new Run(WarmUp + count, (WarmUp + count) / elapsed, double.NaN, double.NaN, cpuMemory, []);
        Console.WriteLine($"  memory {mode}: {memoryRun.MessagesPerSecond:N0} msg/s, client CPU {cpuMemory:0} µs/msg, mean batch {(double)(WarmUp + count) / Math.Max(1, batchHandlerCalls):0.0}");
        return memoryRun;
    }

    await consumer.StartAsync();
    var cpuUs = await Drive(queue, table, count, oneAtATime, published, cpu, mode.ToString());
    await consumer.StopAsync();
    if (mode == Mode.SetBased)
    {
        Console.WriteLine($"  mean set-based batch: {(double)(WarmUp + count) / Math.Max(1, batchHandlerCalls):0.0} messages");
    }

    return await Finish(queue, table, count, published, cpuUs, mode.ToString());
}

// Diagnosis: the broker and the client alone, at the set-based scenario's prefetch and concurrency, acking each delivery.
async Task<Run> ConsumeOnly(int count, int ackEvery)
{
    var queue = await DeclareQueue();
    await Preload(queue, count, oneAtATime: false);
    await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: false, publisherConfirmationTrackingEnabled: false, consumerDispatchConcurrency: (ushort)(ackEvery == 1 ? concurrency : 1)));
    await channel.BasicQosAsync(0, (ushort)Math.Max(prefetch, batchSize * concurrency), false);
    var consumer = new AsyncEventingBasicConsumer(channel);
    long done = 0;
    var all = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    consumer.ReceivedAsync += async (_, ea) =>
    {
        _ = ea.Body.ToArray();
        var n = Interlocked.Increment(ref done);
        if (ackEvery == 1 || n % ackEvery == 0 || n == WarmUp + count)
        {
            await channel.BasicAckAsync(ea.DeliveryTag, multiple: ackEvery > 1);
        }

        if (n == WarmUp + count)
        {
            all.TrySetResult();
        }
    };
    var cpu = Process.GetCurrentProcess().TotalProcessorTime;
    var watch = Stopwatch.StartNew();
    var tag = await channel.BasicConsumeAsync(queue, autoAck: false, consumer);
    await all.Task.WaitAsync(TimeSpan.FromMinutes(2));
    var elapsed = watch.Elapsed.TotalSeconds;
    var cpuUs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMicroseconds / (WarmUp + count);
    await channel.BasicCancelAsync(tag);
    var run = new Run(WarmUp + count, (WarmUp + count) / elapsed, double.NaN, double.NaN, cpuUs, []);
    Console.WriteLine($"  consume only, ack every {ackEvery}: {run.MessagesPerSecond:N0} msg/s, client CPU {cpuUs:0} µs/msg");
    return run;
}

// Diagnosis: our batch path without the broker, like the SQL batch loop: `concurrency` workers, batches of --batch.
async Task<Run> ProcessorAlone()
{
    var table = await sql.BusinessTableAsync(notify: false);
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_" + Guid.NewGuid().ToString("N")[..8], OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8] });
    await store.EnsureSchemaAsync();
    var handler = IdempotentHandler.CreateBatch(
        async (ctx, ct) => await SetBasedUpsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Messages.Select(m => m.Key).ToArray()),
        (ctx, ct) => new ValueTask(Upsert(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), table, ctx.Key)));
    var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench" });
    long done = 0;
    var stopAt = Stopwatch.GetTimestamp() + (long)(sqlSeconds * Stopwatch.Frequency);
    var cpu = Process.GetCurrentProcess().TotalProcessorTime;
    var watch = Stopwatch.StartNew();
    await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
    {
        while (Stopwatch.GetTimestamp() < stopAt)
        {
            var batch = Enumerable.Range(0, batchSize).Select(_ => Guid.NewGuid().ToString()).Select(id => new IncomingMessage(id, Body(id)) { Broker = "rabbitmq", Destination = "bench" }).ToArray();
            var results = await processor.ProcessBatchAsync(batch);
            if (results.Any(r => r.Outcome != ProcessingOutcome.Processed))
            {
                throw new InvalidOperationException("alone: not every message was processed");
            }

            Interlocked.Add(ref done, batch.Length);
        }
    })));
    var elapsed = watch.Elapsed.TotalSeconds;
    var cpuUs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMicroseconds / done;
    var run = new Run((int)done, done / elapsed, double.NaN, double.NaN, cpuUs, []);
    Console.WriteLine($"  processor alone: {run.MessagesPerSecond:N0} msg/s, client CPU {cpuUs:0} µs/msg");
    return run;
}

async Task<Run> Wolverine(int count, bool oneAtATime)
{
    var table = await sql.BusinessTableAsync(notify: oneAtATime);
    var queue = await DeclareQueue();
    var published = await Preload(queue, count, oneAtATime);
    var wolverineSchema = "bench_wolv_" + Guid.NewGuid().ToString("N")[..8];
    try
    {
        await using var child = await PeerProcess.StartAsync(queue, table, wolverineSchema, prefetch, concurrency);
        await Drive(queue, table, count, oneAtATime, published, TimeSpan.Zero, "wolverine");
        var missing = await child.StopAsync();
        if (missing != 0)
        {
            throw new InvalidOperationException($"wolverine: {missing} handlers ran without the inbox transaction");
        }

        return await Finish(queue, table, count, published, double.NaN, "wolverine");
    }
    finally
    {
        await sql.ExecAsync($"DROP SCHEMA IF EXISTS {wolverineSchema} CASCADE");
    }
}

// Throughput runs: the warm-up and the measured messages are in the queue before the consumer starts (no publisher
// competes for the cores while it runs). Low-load runs: only the warm-up; Drive publishes the rest one at a time.
async Task<Dictionary<string, DateTime>> Preload(string queue, int count, bool oneAtATime)
{
    await using var publisher = await publishConnection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
    await PublishAsync(publisher, queue, WarmUp, null);
    var published = new Dictionary<string, DateTime>(count);
    if (!oneAtATime)
    {
        await PublishAsync(publisher, queue, count, published);
    }

    return published;
}

// Waits for every effect; in a low-load run first waits for the warm-up, then publishes one message at a time and
// waits for its commit (PostgreSQL's NOTIFY, delivered only after the commit). Returns the client CPU µs per message
// from the consumer's start (throughput runs; low-load: from the first measured publish).
async Task<double> Drive(string queue, string table, int count, bool oneAtATime, Dictionary<string, DateTime> published, TimeSpan cpu, string name)
{
    var messagesForCpu = WarmUp + count;
    if (oneAtATime)
    {
        await sql.WaitForEffectsAsync(table, WarmUp, TimeSpan.FromMinutes(3), name);
        await using var publisher = await publishConnection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        await using var listener = await sql.ListenAsync(table);
        cpu = Process.GetCurrentProcess().TotalProcessorTime;
        messagesForCpu = count;
        for (var i = 0; i < count; i++)
        {
            var id = Guid.NewGuid().ToString();
            var committed = listener.Expect(id);
            published[id] = DateTime.UtcNow;
            await publisher.BasicPublishAsync(string.Empty, queue, mandatory: true, Properties(id), Body(id));
            await committed.WaitAsync(TimeSpan.FromMinutes(1));
        }
    }

    await sql.WaitForEffectsAsync(table, WarmUp + count, TimeSpan.FromMinutes(5), name);
    return (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMicroseconds / messagesForCpu;
}

async Task<Run> Finish(string queue, string table, int count, Dictionary<string, DateTime> published, double cpuUs, string name)
{
    // Nothing left in the queue: every message acknowledged after its effect.
    await using (var admin = await connection.CreateChannelAsync())
    {
        var left = await admin.MessageCountAsync(queue);
        if (left != 0)
        {
            throw new InvalidOperationException($"{name}: {left} messages left in the queue after the run");
        }
    }

    return await sql.MeasureAsync(table, WarmUp + count, published, cpuUs, name);
}

async Task PublishAsync(IChannel publisher, string queue, int count, Dictionary<string, DateTime>? published)
{
    var pending = new List<Task>(500);
    for (var i = 0; i < count; i++)
    {
        var id = Guid.NewGuid().ToString();
        if (published is not null)
        {
            published[id] = DateTime.UtcNow;
        }

        pending.Add(publisher.BasicPublishAsync(string.Empty, queue, mandatory: true, Properties(id), Body(id)).AsTask());
        if (pending.Count == 500)
        {
            await Task.WhenAll(pending);
            pending.Clear();
        }
    }

    await Task.WhenAll(pending);
}

static BasicProperties Properties(string id) => new() { MessageId = id, Persistent = true, ContentType = "application/json" };

static byte[] Body(string id) => Encoding.UTF8.GetBytes($"{{\"Id\":\"{id}\",\"Amount\":5}}");

async Task<string> DeclareQueue()
{
    var queue = $"idem.bench.{Guid.NewGuid():N}";
    queues.Add(queue);
    await using var admin = await connection.CreateChannelAsync();
    await admin.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false); // classic, declared as Wolverine declares it
    return queue;
}

static async Task Upsert(NpgsqlConnection conn, NpgsqlTransaction tx, string table, string id)
{
    await using var command = new NpgsqlCommand($"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1", conn, tx);
    command.Parameters.AddWithValue("id", id);
    await command.ExecuteNonQueryAsync();
}

// One upsert for the whole batch, ids sorted so that concurrent batches lock rows in the same order.
static async Task SetBasedUpsert(NpgsqlConnection conn, NpgsqlTransaction tx, string table, string[] ids)
{
    await using var command = new NpgsqlCommand(
        $"INSERT INTO {table} (id, amount, applied) SELECT id, 5, 1 FROM unnest(@ids) AS u(id) ORDER BY id ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
        conn,
        tx);
    command.Parameters.Add(new NpgsqlParameter("ids", NpgsqlDbType.Array | NpgsqlDbType.Text) { Value = ids });
    await command.ExecuteNonQueryAsync();
}

string? ArgText(string name)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

int Arg(string name, int fallback)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : fallback;
}

static double Median(IEnumerable<double> values)
{
    var sorted = values.Order().ToArray();
    return sorted.Length == 0 ? double.NaN : sorted[sorted.Length / 2];
}

static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, Math.Max(0, (int)Math.Ceiling(p * sorted.Length) - 1))];

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

internal enum Mode
{
    Default,
    PerMessage,
    AtCommit,
    SetBased,
}

internal sealed record Row(string Key, string Name, double MessagesPerSecond, double P50Ms, double P99Ms, double ClientCpuMicroseconds, int Messages, string Rounds);

internal sealed record Ratio(string Name, double Value, double? Target, string Direction);
