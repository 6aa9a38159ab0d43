// Scale-out benchmark: the Redis store on a Redis Cluster against a single server, per message and in batches, with
// and without WaitForReplicas. Every row runs the real IdempotentProcessor with a Redis-held effect (INCR of a key
// colocated with the message's key, in the store's MULTI/EXEC) and checks effects == unique keys afterwards.
//
//   scripts/services.sh cluster-up && eval "$(scripts/services.sh cluster-env)" && eval "$(scripts/services.sh env)"
//   dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Scale -- redis-cluster [--seconds 5] [--out benchmarks/results]
//
// IDEMPOTENCY_REDIS_CLUSTER gives the cluster's seed nodes, IDEMPOTENCY_REDIS the single server.
//
// consumers: 1, 2 and 4 consumer processes per broker on one queue or topic and one PostgreSQL store (RabbitMQ:
// IdempotentRabbitMqConsumer; Kafka: IdempotentKafkaConsumer in one group on a 16-partition topic of librdkafka's mock
// cluster, hosted by a process of its own; SQS: IdempotentSqsWorker on one fauxqs queue):
//   scripts/services.sh pg-ha-up && scripts/services.sh pg-ha-async     # a private store on :5433 whose CPU is ours alone
//   eval "$(scripts/services.sh env)"
//   dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Scale -- consumers [--brokers rabbitmq,kafka,sqs]
//       [--unique 10000] [--kafka-unique 100000] [--concurrency 4] [--counts 1,2,4]
//   scripts/services.sh pg-ha-up                                          # synchronous again
//   (--postgres defaults to Host=127.0.0.1;Port=5433;Username=app;Password=app;Database=appdb, --rabbitmq to
//   IDEMPOTENCY_RABBITMQ, --sqs to IDEMPOTENCY_SQS; --unique is per run for RabbitMQ and SQS, --kafka-unique for Kafka)
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Idempotency;
using Idempotency.Redis;
using StackExchange.Redis;

var scenario = args.FirstOrDefault(a => !a.StartsWith("--", StringComparison.Ordinal)) ?? "redis-cluster";
var seconds = double.Parse(Arg("--seconds") ?? "5", CultureInfo.InvariantCulture);
var outDir = Arg("--out") ?? Path.Combine(FindRepoRoot(), "benchmarks", "results");
if (scenario == "consumer-child")
{
    return await ConsumersScenario.RunConsumerAsync(Arg);
}

if (scenario == "kafka-host")
{
    return KafkaUnderTest.RunHost();
}

if (scenario == "consumers")
{
    var unique = Arg("--unique") ?? "10000";
    var kafkaUnique = Arg("--kafka-unique") ?? "100000";
    var concurrency = Arg("--concurrency") ?? "4";
    var brokers = Arg("--brokers") ?? "rabbitmq,kafka,sqs";
    var counts = Arg("--counts") ?? "1,2,4";
    return await ConsumersScenario.RunAsync(new ConsumersScenario.Settings(
        Arg("--postgres") ?? "Host=127.0.0.1;Port=5433;Username=app;Password=app;Database=appdb",
        Arg("--rabbitmq") ?? Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQ") ?? "amqp://guest:guest@127.0.0.1:5672/",
        Arg("--sqs") ?? Environment.GetEnvironmentVariable("IDEMPOTENCY_SQS") ?? "http://127.0.0.1:4566",
        brokers.Split(','),
        int.Parse(unique, CultureInfo.InvariantCulture),
        int.Parse(kafkaUnique, CultureInfo.InvariantCulture),
        [.. counts.Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture))],
        int.Parse(concurrency, CultureInfo.InvariantCulture),
        outDir,
        $"dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Scale -- consumers --brokers {brokers} --unique {unique} --kafka-unique {kafkaUnique} --concurrency {concurrency} --counts {counts}"));
}

if (scenario != "redis-cluster")
{
    Console.Error.WriteLine($"unknown scenario '{scenario}' (redis-cluster, consumers)");
    return 2;
}

var clusterSeeds = Environment.GetEnvironmentVariable("IDEMPOTENCY_REDIS_CLUSTER")
    ?? throw new InvalidOperationException("IDEMPOTENCY_REDIS_CLUSTER is not set: scripts/services.sh cluster-up && eval \"$(scripts/services.sh cluster-env)\"");
var single = Environment.GetEnvironmentVariable("IDEMPOTENCY_REDIS")
    ?? throw new InvalidOperationException("IDEMPOTENCY_REDIS is not set: eval \"$(scripts/services.sh env)\"");

await using var cluster = await ConnectionMultiplexer.ConnectAsync(clusterSeeds);
await using var server = await ConnectionMultiplexer.ConnectAsync(single);
var rows = new List<string>();
var loadBefore = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "?";
Console.WriteLine($"{Environment.ProcessorCount} cores, {seconds} s per row; cluster {clusterSeeds}; single server {single}");
foreach (var (name, connection, wait) in new[] { ("single server", server, 0), ("cluster 3+3", cluster, 0), ("cluster 3+3, WaitForReplicas=1", cluster, 1) })
{
    foreach (var (batch, workers) in new[] { (1, 16), (100, 4) })
    {
        var (keysPerSecond, effects, unique, p50, p99) = await RunAsync(connection, wait, batch, workers, TimeSpan.FromSeconds(seconds));
        var row = $"| {name} | {batch} | {workers} | {keysPerSecond:N0} | {p50:0.00} | {p99:0.00} | {(effects == unique ? "yes" : $"NO ({effects} effects, {unique} keys)")} |";
        Console.WriteLine(row);
        rows.Add(row);
    }
}

var md = new StringBuilder();
md.AppendLine($"# Redis store: single server vs Redis Cluster ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
md.AppendLine();
md.AppendLine($"`dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Scale -- redis-cluster --seconds {seconds.ToString(CultureInfo.InvariantCulture)}`; {Environment.ProcessorCount} cores shared by the client and every redis-server (loopback).");
md.AppendLine($"Load average (/proc/loadavg) before: {loadBefore}; after: {(File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "?")} (other builds share the machine: compare rows of one run, not runs).");
md.AppendLine("Each message: claim, handler INCR of a key colocated with the message's key (MULTI/EXEC), completion. Latency per processor call (one message, or one batch).");
md.AppendLine();
md.AppendLine("| store | batch | workers | keys/s | p50 ms/call | p99 ms/call | effects == keys |");
md.AppendLine("|---|---:|---:|---:|---:|---:|---|");
foreach (var row in rows)
{
    md.AppendLine(row);
}

Directory.CreateDirectory(outDir);
await File.WriteAllTextAsync(Path.Combine(outDir, "scale-redis-cluster.md"), md.ToString());
Console.WriteLine($"wrote {Path.Combine(outDir, "scale-redis-cluster.md")}");
return 0;

static async Task<(double KeysPerSecond, long Effects, long Unique, double P50, double P99)> RunAsync(IConnectionMultiplexer connection, int wait, int batch, int workers, TimeSpan duration)
{
    var store = new RedisIdempotencyStore(connection, new RedisIdempotencyStoreOptions { KeyPrefix = "bench" + Guid.NewGuid().ToString("N")[..6], WaitForReplicas = wait });
    var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
    {
        _ = context.GetRedisTransaction().StringIncrementAsync(context.GetColocatedRedisKey("fx"));
        return ValueTask.CompletedTask;
    }), new IdempotencyOptions { HandlerName = "orders" });
    var body = Encoding.UTF8.GetBytes("{\"amount\":5}");
    var latencies = new List<double>[workers];
    var keys = new List<string>[workers];
    var clock = Stopwatch.StartNew();
    var deadline = duration;
    var tasks = Enumerable.Range(0, workers).Select(w => Task.Run(async () =>
    {
        latencies[w] = [];
        keys[w] = [];
        var n = 0;
        while (clock.Elapsed < deadline)
        {
            var messages = new IncomingMessage[batch];
            for (var i = 0; i < batch; i++)
            {
                var key = $"w{w}-{n++}";
                keys[w].Add(key);
                messages[i] = new IncomingMessage(key, body) { Destination = "orders", Broker = "bench" };
            }

            var started = Stopwatch.GetTimestamp();
            var results = await processor.ProcessBatchAsync(messages);
            latencies[w].Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
            if (results.Any(r => r.Outcome != ProcessingOutcome.Processed))
            {
                throw new InvalidOperationException($"unexpected outcome {results.First(r => r.Outcome != ProcessingOutcome.Processed).Outcome}");
            }
        }
    })).ToArray();
    await Task.WhenAll(tasks);
    var elapsed = clock.Elapsed.TotalSeconds;
    var all = keys.SelectMany(k => k).ToList();
    long effects = 0;
    foreach (var chunk in all.Chunk(1000))
    {
        var values = await Task.WhenAll(chunk.Select(k => store.Database.StringGetAsync(store.GetColocatedKey("orders", k, "fx"))));
        effects += values.Where(v => v.HasValue).Sum(v => (long)v);
    }

    var sorted = latencies.SelectMany(l => l).Order().ToList();
    return (all.Count / elapsed, effects, all.Count, sorted[sorted.Count / 2], sorted[(int)(sorted.Count * 0.99)]);
}

static string? Arg(string name)
{
    var args = Environment.GetCommandLineArgs();
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

static string FindRepoRoot()
{
    var dir = AppContext.BaseDirectory;
    while (dir is not null && !File.Exists(Path.Combine(dir, "Idempotency.sln")))
    {
        dir = Path.GetDirectoryName(dir);
    }

    return dir ?? Directory.GetCurrentDirectory();
}
