// Kafka adapter benchmark: in ONE run on librdkafka's mock cluster and the local PostgreSQL it measures
// the broker-free database ceilings, a plain at-least-once consumer, the hand-written idempotent consumers a user would
// compare with (the plain consumer plus a key-row insert per message, and plus 100-key batch transactions), our
// per-message mode, our batch mode and a replay of already-processed keys, then prints a markdown table and writes
// markdown + JSON to benchmarks/results/.
// The consumer scenarios run in interleaved rounds (--rounds, median by msgs/s), then a low-load run per round (one
// message in flight, latency = publish -> effect committed, read from the business table's commit clock).
// Usage: dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Kafka [-- messages batchMessages [concurrency]] [--rounds 3] [--low-load 200]
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Confluent.Kafka;
using Dapper;
using Idempotency;
using Idempotency.Benchmarks.Shared;
using Idempotency.Kafka;
using Idempotency.Kafka.Tests;
using Idempotency.Postgres;
using Npgsql;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
var positional = args.TakeWhile(a => !a.StartsWith("--", StringComparison.Ordinal)).ToArray();
var messages = positional.Length > 0 ? int.Parse(positional[0], CultureInfo.InvariantCulture) : 20_000;
var batchMessages = positional.Length > 1 ? int.Parse(positional[1], CultureInfo.InvariantCulture) : 200_000;
var rounds = Named("--rounds", 3);
var lowLoad = Named("--low-load", 200);
var loadStart = LoadAverage();
const int Partitions = 16;
const int Accounts = 100_000;
var BatchConcurrency = positional.Length > 2 ? int.Parse(positional[2], CultureInfo.InvariantCulture) : 4;
var ceilingDuration = TimeSpan.FromSeconds(2);
// The hand-written consumers' names (the report finds rows by their prefixes).
const string HandKeyName = "hand-written: plain consumer + key-row insert per message, 16 partitions concurrent";
var HandBatchName = $"hand-written: plain consumer + 100-key batch transaction, {BatchConcurrency} concurrent";
// librdkafka holds a fetch for up to fetch.wait.max.ms (500 ms by default) when its partitions have no data; a partition
// whose start offset resolves after its broker's first fetch waits out that broker's long poll once, and in a run of
// 0.1-0.3 s (8,000 messages, the replays) that one wait decided the result in about one round in four. Every consumer
// of the throughput runs, plain and ours, uses 10 ms (a replay of 8,000 messages lasts about 70 ms); the low-load run 5 ms.
const int ThroughputFetchWaitMaxMs = 10;
int fetchWaitMaxMs = ThroughputFetchWaitMaxMs;

var connectionString = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? "Host=127.0.0.1;Port=5432;Username=app;Password=app;Database=appdb";
connectionString = new NpgsqlConnectionStringBuilder(connectionString) { MaxPoolSize = 64, NoResetOnClose = true }.ConnectionString;
await using var dataSource = NpgsqlDataSource.Create(connectionString);
var schema = "bench_" + Guid.NewGuid().ToString("N")[..8];
await using (var c = await dataSource.OpenConnectionAsync())
{
    await c.ExecuteAsync($"CREATE SCHEMA {schema}");
}

var rows = new List<Row>();
var lowLoadRows = new List<LowLoadRow>();
var clock = new CommitClock(dataSource, schema);
var scenarioCpu = CpuMeter.Now();
try
{
    using var cluster = MockKafkaCluster.Start();
    Console.WriteLine($"mock cluster {cluster.BootstrapServers}; PostgreSQL schema {schema}; {messages} messages ({batchMessages} for batch mode and the default options), {Partitions} partitions");

    // ---- database ceilings ----
    var ceilKeys = await NewKeyTable("ceil_keys");
    var accounts = await NewAccounts("ceil_accounts");
    // Ceilings at 1 and 4 connections once; the ones the targets use (16 connections, update-only, 100-key batch) in
    // every round below.
    foreach (var connections in new[] { 1, 4 })
    {
        rows.Add(await Ceiling($"ceiling: claim + update tx, {connections} conn", connections, 1, ClaimAndUpdate));
    }

    async Task ClaimAndUpdate(NpgsqlConnection conn, string[] keys, int[] ids)
    {
        await using var tx = await conn.BeginTransactionAsync();
        await conn.ExecuteAsync($"INSERT INTO {ceilKeys} (key) VALUES (@k) ON CONFLICT DO NOTHING", new { k = keys[0] }, tx);
        await conn.ExecuteAsync($"UPDATE {accounts} SET balance = balance + 1 WHERE id = @id", new { id = ids[0] }, tx);
        await tx.CommitAsync();
    }

    // The plain consumer's transaction alone (one UPDATE) at the same concurrency: its ratio to the claim + update
    // ceiling is the most that recording one key row per message can keep of the plain consumer on this machine.
    async Task UpdateOnly(NpgsqlConnection conn, string[] keys, int[] ids)
    {
        await using var tx = await conn.BeginTransactionAsync();
        await conn.ExecuteAsync($"UPDATE {accounts} SET balance = balance + 1 WHERE id = @id", new { id = ids[0] }, tx);
        await tx.CommitAsync();
    }

    async Task HundredKeyBatch(NpgsqlConnection conn, string[] keys, int[] ids)
    {
        await using var tx = await conn.BeginTransactionAsync();
        await conn.ExecuteAsync($"INSERT INTO {ceilKeys} (key) SELECT k FROM unnest(@keys) AS k ORDER BY k ON CONFLICT DO NOTHING", new { keys }, tx);
        await conn.ExecuteAsync($"UPDATE {accounts} a SET balance = a.balance + 1 FROM (SELECT unnest(@ids) AS id ORDER BY 1) s WHERE a.id = s.id", new { ids }, tx);
        await tx.CommitAsync();
    }

    // ---- consumers ----
    var topic = "bench-" + Guid.NewGuid().ToString("N")[..8];
    cluster.CreateTopic(topic, Partitions);
    Produce(cluster, topic, messages, "m");
    var batchTopic = "bench-batch-" + Guid.NewGuid().ToString("N")[..8];
    cluster.CreateTopic(batchTopic, Partitions);
    Produce(cluster, batchTopic, batchMessages, "b");

    // The batch path without Kafka: the same store, handler and batches of 100 from 4 workers, like the batched ceiling.
    var aloneStore = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_alone", OutboxTable = "outbox_alone" });
    await aloneStore.EnsureSchemaAsync();
    // Run twice, the first as the JIT's warm-up (the library's code is cold at this point), and keep the second.
    var aloneHandler = Handler(await NewAccounts("alone_accounts"));
    await ProcessorAlone("warm-up", aloneStore, aloneHandler, 100, 4);
    rows.Add(await ProcessorAlone("IdempotentProcessor.ProcessBatchAsync alone, batches of 100, 4 workers (no Kafka)", aloneStore, aloneHandler, 100, 4));

    // What the in-process mock cluster and the client deliver on this machine with no database at all: a ceiling
    // for every Kafka row below (they share the same cores with the broker).
    rows.Add(ConsumeOnly("consume only, no database (mock cluster ceiling)", cluster, batchTopic, batchMessages));

    // Interleaved rounds: every consumer scenario once per round, each on its own tables (a fresh store and accounts
    // table, so that no round sees another's keys); the report keeps each scenario's median round by msgs/s.
    var perRound = new Dictionary<string, List<Row>>();
    var lowLoadRunsPlain = new List<Run>();
    var lowLoadRunsDefault = new List<Run>();
    var lowLoadRunsPerMessage = new List<Run>();
    var warmingUp = false;
    void Add(Row row)
    {
        if (!warmingUp)
        {
            (perRound.TryGetValue(row.Name, out var list) ? list : perRound[row.Name] = []).Add(row);
        }
    }
    async Task<(PostgresIdempotencyStore Store, string Accounts)> Fresh(string name)
    {
        var suffix = name + "_" + Guid.NewGuid().ToString("N")[..6];
        var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_" + suffix, OutboxTable = "outbox_" + suffix });
        await store.EnsureSchemaAsync();
        return (store, await NewAccounts("accounts_" + suffix));
    }

    async Task KeyRows(string keys, long expected, string name)
    {
        await using var c = await dataSource.OpenConnectionAsync();
        var recorded = await c.ExecuteScalarAsync<long>($"SELECT count(*) FROM {keys}");
        if (recorded != expected)
        {
            throw new InvalidOperationException($"{name}: {recorded} key rows for {expected} messages");
        }

        await Settle(keys);
    }

    // Checks the scenario's effects, then settles the tables it wrote (the accounts and, for ours, the store's key table).
    async Task Effects(string accounts, long expected, string name, params string[] alsoWritten)
    {
        await using var c = await dataSource.OpenConnectionAsync();
        var applied = await c.ExecuteScalarAsync<long>($"SELECT sum(balance) FROM {accounts}");
        if (applied != expected)
        {
            throw new InvalidOperationException($"{name}: {applied} effects applied for {expected} messages");
        }

        await Settle([accounts, .. alsoWritten]);
    }

    // Round 0 warms up and is not reported: the JIT recompiles the hot code of every scenario at its optimizing tier
    // while the first ~100,000 messages go through (thousands of methods in the library's path, few in a hand-written
    // loop), and a long-running consumer pays that once at start-up, not per message. After it, each scenario of a
    // measured round leaves the JIT a few dozen methods to compile (printed on the console with each scenario).
    for (var round = 0; round <= rounds; round++)
    {
        warmingUp = round == 0;
        Console.WriteLine(warmingUp ? $"warm-up round (not reported), load average {LoadAverage()}" : $"round {round}/{rounds}, load average {LoadAverage()}");
        Add(await Ceiling("ceiling: claim + update tx, 16 conn", 16, 1, ClaimAndUpdate));
        await Settle(ceilKeys, accounts);
        Add(await Ceiling("ceiling: update-only tx (the plain consumer's statement), 16 conn", 16, 1, UpdateOnly));
        await Settle(accounts);
        Add(await Ceiling("ceiling: 100-key batch tx, 4 conn", 4, 100, HundredKeyBatch));
        await Settle(ceilKeys, accounts);
        var plainAccounts = await NewAccounts("plain_accounts_" + round);
        Add(await Plain($"plain at-least-once, {Partitions} partitions concurrent", cluster, topic, messages, plainAccounts, concurrent: true));
        await Effects(plainAccounts, messages, "plain");

        // The hand-written idempotent consumer: the plain consumer with the claim + update ceiling's transaction.
        var handKeyRows = await NewKeyTable($"hand_keys_{round}");
        var handKeyAccounts = await NewAccounts($"hand_key_accounts_{round}");
        Add(await Plain(HandKeyName, cluster, topic, messages, handKeyAccounts, concurrent: true, KeyRowThenUpdate(handKeyRows, handKeyAccounts)));
        await Effects(handKeyAccounts, messages, "hand-written key-row consumer");
        await KeyRows(handKeyRows, messages, "hand-written key-row consumer");

        // The default options batch naturally, so they go through `messages` in a few hundred ms and a replay of them in
        // 50-120 ms: windows that short moved the replay / new ratio between 2.4x and 4.1x from run to run. They take the
        // batch topic's messages instead (seconds for new ones, most of a second for the replay).
        var (defaultStore, defaultAccounts) = await Fresh("default");
        Add(await Ours("ours default options (natural batching, per-message handler)", cluster, batchTopic, batchMessages, defaultStore, Handler(defaultAccounts), batchSize: 0, ProcessingOutcome.Processed));
        await Effects(defaultAccounts, batchMessages, "default", defaultStore.QualifiedTableName);
        Add(await Ours("ours replay (all duplicates), default options", cluster, batchTopic, batchMessages, defaultStore, Handler(defaultAccounts), batchSize: 0, ProcessingOutcome.Duplicate));

        var (store, ourAccounts) = await Fresh("per_message");
        Add(await Ours("ours per-message", cluster, topic, messages, store, Handler(ourAccounts), batchSize: 1, ProcessingOutcome.Processed));
        Add(await Ours("ours replay (all duplicates), per-message", cluster, topic, messages, store, Handler(ourAccounts), batchSize: 1, ProcessingOutcome.Duplicate));
        await Effects(ourAccounts, messages, "per-message", store.QualifiedTableName);

        // ClaimTiming.AtCommit: the handler first, the key inserted completed with the commit (2 round trips per new message).
        var (atCommitStore, atCommitAccounts) = await Fresh("at_commit");
        Add(await Ours("ours per-message, claim at commit", cluster, topic, messages, atCommitStore, Handler(atCommitAccounts), batchSize: 1, ProcessingOutcome.Processed, ClaimTiming.AtCommit));
        Add(await Ours("ours replay (all duplicates), per-message, claim at commit", cluster, topic, messages, atCommitStore, Handler(atCommitAccounts), batchSize: 1, ProcessingOutcome.Duplicate, ClaimTiming.AtCommit));
        await Effects(atCommitAccounts, messages, "claim at commit", atCommitStore.QualifiedTableName);

        var (batchStore, batchAccounts) = await Fresh("batch");
        Add(await Ours("ours batch mode (100)", cluster, batchTopic, batchMessages, batchStore, Handler(batchAccounts), batchSize: 100, ProcessingOutcome.Processed));
        Add(await Ours("ours replay (all duplicates), batch mode (100)", cluster, batchTopic, batchMessages, batchStore, Handler(batchAccounts), batchSize: 100, ProcessingOutcome.Duplicate));
        await Effects(batchAccounts, batchMessages, "batch", batchStore.QualifiedTableName);

        // The hand-written batch consumer: ours batch mode's partitions, concurrency and batch size, the 100-key ceiling's transaction.
        var handBatchRows = await NewKeyTable($"hand_batch_keys_{round}");
        var handBatchAccounts = await NewAccounts($"hand_batch_accounts_{round}");
        Add(await HandBatch(HandBatchName, cluster, batchTopic, batchMessages, handBatchRows, handBatchAccounts, 100, BatchConcurrency));
        await Effects(handBatchAccounts, batchMessages, "hand-written batch consumer");
        await KeyRows(handBatchRows, batchMessages, "hand-written batch consumer");

        if (lowLoad > 0 && !warmingUp)
        {
            lowLoadRunsPlain.Add(await LowLoad("plain", cluster, ours: false));
            lowLoadRunsDefault.Add(await LowLoad("default", cluster, ours: true));
            lowLoadRunsPerMessage.Add(await LowLoad("per-message", cluster, ours: true, batchSize: 1));
        }
    }

    foreach (var (name, list) in perRound)
    {
        var median = list.OrderBy(r => r.MessagesPerSecond).ElementAt(list.Count / 2);
        rows.Add(median with { Rounds = string.Join(" / ", list.Select(r => r.MessagesPerSecond.ToString("N0", CultureInfo.InvariantCulture))) });
    }

    foreach (var (name, runs) in new[] { ("Plain at-least-once consumer (16 partitions concurrent)", lowLoadRunsPlain), ("Ours, default options", lowLoadRunsDefault), ("Ours, batching off (BatchSize 1)", lowLoadRunsPerMessage) })
    {
        if (runs.Count > 0)
        {
            var samples = runs.SelectMany(r => r.LatenciesMs).Order().ToArray();
            lowLoadRows.Add(new LowLoadRow(name, Pct(samples, 0.50), Pct(samples, 0.99), samples.Length, string.Join(" / ", runs.Select(r => r.P99Ms.ToString("0.0", CultureInfo.InvariantCulture)))));
        }
    }
}
finally
{
    await using var c = await dataSource.OpenConnectionAsync();
    await c.ExecuteAsync($"DROP SCHEMA {schema} CASCADE");
}

Report(rows, lowLoadRows, rounds, lowLoad, loadStart, BatchConcurrency);
return;

int Named(string name, int fallback)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : fallback;
}

static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

// ------------------------------------------------------------------------------------------------------------------

async Task<string> NewKeyTable(string name)
{
    await using var c = await dataSource.OpenConnectionAsync();
    await c.ExecuteAsync($"CREATE TABLE {schema}.{name} (key text PRIMARY KEY)");
    return $"{schema}.{name}";
}

async Task<string> NewAccounts(string name)
{
    await using var c = await dataSource.OpenConnectionAsync();
    await c.ExecuteAsync($"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0); INSERT INTO {schema}.{name} (id) SELECT generate_series(0, {Accounts - 1})");
    await Settle($"{schema}.{name}");
    return $"{schema}.{name}";
}

// Vacuums and analyzes tables a scenario set up or wrote, outside every measured window. Left to autovacuum, the
// maintenance of a table (100,000 freshly inserted accounts, a run's 8,000 key rows) runs whenever the launcher wakes,
// inside whichever scenario is measured then: a few hundred ms of PostgreSQL CPU in a 2-3 s window.
async Task Settle(params string[] tables)
{
    await using var c = await dataSource.OpenConnectionAsync();
    foreach (var table in tables)
    {
        await c.ExecuteAsync($"VACUUM (ANALYZE) {table}");
    }
}

static int AccountOf(string key) => (int)((uint)key.GetHashCode(StringComparison.Ordinal) % Accounts);

IIdempotentMessageHandler Handler(string table) => IdempotentHandler.CreateBatch(
    async (batch, ct) =>
    {
        // Set-based: one statement for the whole batch, rows locked in a stable order.
        var ids = batch.Messages.Select(m => AccountOf(m.Key)).Order().ToArray();
        await batch.GetNpgsqlConnection().ExecuteAsync(
            $"UPDATE {table} a SET balance = a.balance + s.n FROM (SELECT id, count(*) AS n FROM unnest(@ids) AS id GROUP BY id ORDER BY id) s WHERE a.id = s.id",
            new { ids }, batch.GetNpgsqlTransaction());
    },
    async (context, ct) => await context.GetNpgsqlConnection().ExecuteAsync(
        $"UPDATE {table} SET balance = balance + 1 WHERE id = @id", new { id = AccountOf(context.Key) }, context.GetNpgsqlTransaction()));

async Task<Row> Ceiling(string name, int connections, int keysPerTx, Func<NpgsqlConnection, string[], int[], Task> transaction)
{
    scenarioCpu = CpuMeter.Now();
    var latencies = new ConcurrentBag<double>();
    long done = 0;
    var salt = Guid.NewGuid().ToString("N")[..8]; // new keys in every round
    var stopAt = Stopwatch.GetTimestamp() + (long)(ceilingDuration.TotalSeconds * Stopwatch.Frequency);
    var started = Stopwatch.GetTimestamp();
    await Task.WhenAll(Enumerable.Range(0, connections).Select(w => Task.Run(async () =>
    {
        await using var conn = await dataSource.OpenConnectionAsync();
        var n = 0;
        while (Stopwatch.GetTimestamp() < stopAt)
        {
            var keys = Enumerable.Range(0, keysPerTx).Select(i => $"{salt}-{w}-{n}-{i}").Order(StringComparer.Ordinal).ToArray();
            var ids = keys.Select(AccountOf).Order().ToArray();
            var t0 = Stopwatch.GetTimestamp();
            await transaction(conn, keys, ids);
            latencies.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            Interlocked.Add(ref done, keysPerTx);
            n++;
        }
    })));
    return Measured(name, done, Stopwatch.GetElapsedTime(started), latencies);
}

async Task<Row> ProcessorAlone(string name, PostgresIdempotencyStore store, IIdempotentMessageHandler handler, int batchSize, int workers)
{
    scenarioCpu = CpuMeter.Now();
    var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench" });
    var salt = Guid.NewGuid().ToString("N")[..8]; // new keys in every call
    var latencies = new ConcurrentBag<double>();
    long done = 0;
    var stopAt = Stopwatch.GetTimestamp() + (long)(ceilingDuration.TotalSeconds * Stopwatch.Frequency);
    var started = Stopwatch.GetTimestamp();
    await Task.WhenAll(Enumerable.Range(0, workers).Select(w => Task.Run(async () =>
    {
        var n = 0;
        while (Stopwatch.GetTimestamp() < stopAt)
        {
            var batch = Enumerable.Range(0, batchSize).Select(i => new IncomingMessage($"alone-{salt}-{w}-{n}-{i}", Encoding.UTF8.GetBytes($"{{\"id\":\"alone-{salt}-{w}-{n}-{i}\",\"amount\":1}}")) { Broker = "kafka", Destination = "bench" }).ToArray();
            var t0 = Stopwatch.GetTimestamp();
            var results = await processor.ProcessBatchAsync(batch);
            latencies.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            if (results.Any(r => r.Outcome != ProcessingOutcome.Processed))
            {
                throw new InvalidOperationException($"{name}: not every message was processed");
            }

            Interlocked.Add(ref done, batchSize);
            n++;
        }
    })));
    return Measured(name, done, Stopwatch.GetElapsedTime(started), latencies);
}

Row ConsumeOnly(string name, MockKafkaCluster cluster, string topic, int count)
{
    scenarioCpu = CpuMeter.Now();
    using var consumer = new ConsumerBuilder<byte[], byte[]>(ConsumerConfig(cluster, "consume-only-" + Guid.NewGuid().ToString("N")[..8])).Build();
    consumer.Subscribe(topic);
    var latencies = new ConcurrentBag<double>();
    long done = 0;
    long first = 0;
    while (done < count)
    {
        if (consumer.Consume(100) is { Message: not null })
        {
            if (first == 0)
            {
                first = Stopwatch.GetTimestamp();
            }

            done++;
        }
    }

    var elapsed = Stopwatch.GetElapsedTime(first);
    consumer.Close();
    return Measured(name, done, elapsed, latencies);
}

async Task<Row> Plain(string name, MockKafkaCluster cluster, string topic, int count, string table, bool concurrent, Func<NpgsqlConnection, NpgsqlTransaction, string, Task>? write = null)
{
    scenarioCpu = CpuMeter.Now();
    // The usual at-least-once consumer: the business write in its own transaction, the offset stored after it commits.
    using var consumer = OffsetStoringConsumer(cluster, "plain-", topic);
    var latencies = new ConcurrentBag<double>();
    var target = concurrent ? count : Math.Min(count, 5_000);
    long done = 0;
    long first = 0;

    async Task Process(ConsumeResult<byte[], byte[]> record)
    {
        var t0 = Stopwatch.GetTimestamp();
        Interlocked.CompareExchange(ref first, t0, 0);
        await using (var conn = await dataSource.OpenConnectionAsync())
        await using (var tx = await conn.BeginTransactionAsync())
        {
            if (write is not null)
            {
                await write(conn, tx, Encoding.UTF8.GetString(record.Message.Key));
            }
            else
            {
                await conn.ExecuteAsync($"UPDATE {table} SET balance = balance + 1 WHERE id = @id", new { id = AccountOf(Encoding.UTF8.GetString(record.Message.Key)) }, tx);
            }
            await tx.CommitAsync();
        }

        latencies.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
        consumer.StoreOffset(record);
        Interlocked.Increment(ref done);
    }

    if (!concurrent)
    {
        while (Interlocked.Read(ref done) < target)
        {
            if (consumer.Consume(100) is { Message: not null } record)
            {
                await Process(record);
            }
        }
    }
    else
    {
        await ByPartition(consumer, () => Interlocked.Read(ref done) < target, async reader =>
        {
            await foreach (var r in reader.ReadAllAsync())
            {
                await Process(r);
            }
        });
    }

    var elapsed = Stopwatch.GetElapsedTime(first);
    consumer.Close();
    return Measured(name, done, elapsed, latencies);
}

// The plain consumer's offset handling: the code stores a record's offset after its commit, auto-committed every second.
IConsumer<byte[], byte[]> OffsetStoringConsumer(MockKafkaCluster cluster, string groupPrefix, string topic)
{
    var config = ConsumerConfig(cluster, groupPrefix + Guid.NewGuid().ToString("N")[..8]);
    config.EnableAutoCommit = true;
    config.AutoCommitIntervalMs = 1000;
    config.EnableAutoOffsetStore = false;
    var consumer = new ConsumerBuilder<byte[], byte[]>(config).Build();
    consumer.Subscribe(topic);
    return consumer;
}

// Polls while `more()` and hands each partition's records, in order, to that partition's own lane (one task each);
// then completes the lanes and waits for them.
static async Task ByPartition(IConsumer<byte[], byte[]> consumer, Func<bool> more, Func<ChannelReader<ConsumeResult<byte[], byte[]>>, Task> lane)
{
    var queues = new Dictionary<int, Channel<ConsumeResult<byte[], byte[]>>>();
    var lanes = new List<Task>();
    while (more())
    {
        if (consumer.Consume(10) is not { Message: not null } record)
        {
            continue;
        }

        if (!queues.TryGetValue(record.Partition.Value, out var queue))
        {
            queue = Channel.CreateUnbounded<ConsumeResult<byte[], byte[]>>();
            queues[record.Partition.Value] = queue;
            lanes.Add(Task.Run(() => lane(queue.Reader)));
        }

        queue.Writer.TryWrite(record);
    }

    foreach (var queue in queues.Values)
    {
        queue.Writer.TryComplete();
    }

    await Task.WhenAll(lanes);
}

// The hand-written idempotent consumer's per-message transaction body: the claim + update ceiling's statements, the
// update skipped when the key row exists already (a redelivery).
Func<NpgsqlConnection, NpgsqlTransaction, string, Task> KeyRowThenUpdate(string keys, string table) => async (conn, tx, key) =>
{
    if (await conn.ExecuteAsync($"INSERT INTO {keys} (key) VALUES (@k) ON CONFLICT DO NOTHING", new { k = key }, tx) == 1)
    {
        await conn.ExecuteAsync($"UPDATE {table} SET balance = balance + 1 WHERE id = @id", new { id = AccountOf(key) }, tx);
    }
};

// The hand-written batch consumer: the plain consumer's poll loop, offset handling and per-partition queues; each
// partition takes up to batchSize of what is ready (no wait for a batch to fill) once one of `workers` transaction slots
// is free (ours batch mode: Concurrency partitions at once), runs the 100-key ceiling's transaction with the batch
// handler's set-based update, then stores the batch's last offset.
async Task<Row> HandBatch(string name, MockKafkaCluster cluster, string topic, int count, string keys, string table, int batchSize, int workers)
{
    scenarioCpu = CpuMeter.Now();
    using var consumer = OffsetStoringConsumer(cluster, "hand-batch-", topic);
    var latencies = new ConcurrentBag<double>();
    using var slots = new SemaphoreSlim(workers);
    long done = 0;
    long first = 0;
    long batches = 0;

    async Task Lane(ChannelReader<ConsumeResult<byte[], byte[]>> reader)
    {
        var batch = new List<ConsumeResult<byte[], byte[]>>(batchSize);
        while (await reader.WaitToReadAsync())
        {
            await slots.WaitAsync();
            try
            {
                batch.Clear();
                while (batch.Count < batchSize && reader.TryRead(out var record))
                {
                    batch.Add(record);
                }

                var t0 = Stopwatch.GetTimestamp();
                Interlocked.CompareExchange(ref first, t0, 0);
                await BatchTransaction(keys, table, batch.Select(r => Encoding.UTF8.GetString(r.Message.Key)).ToArray());
                var ms = Stopwatch.GetElapsedTime(t0).TotalMilliseconds;
                foreach (var _ in batch)
                {
                    latencies.Add(ms);
                }
            }
            finally
            {
                slots.Release();
            }

            consumer.StoreOffset(batch[^1]);
            Interlocked.Increment(ref batches);
            Interlocked.Add(ref done, batch.Count);
        }
    }

    await ByPartition(consumer, () => Interlocked.Read(ref done) < count, Lane);
    var elapsed = Stopwatch.GetElapsedTime(first);
    consumer.Close();
    Console.WriteLine($"  mean hand-written batch: {(double)done / Math.Max(1, batches):0.0} messages");
    return Measured(name, done, elapsed, latencies);
}

// One batch transaction of the hand-written consumer: the 100-key ceiling's key-row insert and the batch handler's
// set-based update when every key is new (always, in this benchmark); when some are known, it is redone for the new ones.
async Task BatchTransaction(string keys, string table, string[] batchKeys)
{
    const string Update = "UPDATE {0} a SET balance = a.balance + s.n FROM (SELECT id, count(*) AS n FROM unnest(@ids) AS id GROUP BY id ORDER BY id) s WHERE a.id = s.id";
    await using var conn = await dataSource.OpenConnectionAsync();
    await using (var tx = await conn.BeginTransactionAsync())
    {
        var inserted = await conn.ExecuteAsync($"INSERT INTO {keys} (key) SELECT k FROM unnest(@batchKeys) AS k ORDER BY k ON CONFLICT DO NOTHING", new { batchKeys }, tx);
        if (inserted == batchKeys.Length)
        {
            await conn.ExecuteAsync(string.Format(CultureInfo.InvariantCulture, Update, table), new { ids = batchKeys.Select(AccountOf).Order().ToArray() }, tx);
        }

        if (inserted == batchKeys.Length || inserted == 0)
        {
            await tx.CommitAsync();
            return;
        }
    }

    await using (var tx = await conn.BeginTransactionAsync())
    {
        var fresh = (await conn.QueryAsync<string>($"INSERT INTO {keys} (key) SELECT k FROM unnest(@batchKeys) AS k ORDER BY k ON CONFLICT DO NOTHING RETURNING key", new { batchKeys }, tx)).ToArray();
        if (fresh.Length > 0)
        {
            await conn.ExecuteAsync(string.Format(CultureInfo.InvariantCulture, Update, table), new { ids = fresh.Select(AccountOf).Order().ToArray() }, tx);
        }

        await tx.CommitAsync();
    }
}

async Task<Row> Ours(string name, MockKafkaCluster cluster, string topic, int count, PostgresIdempotencyStore store, IIdempotentMessageHandler handler, int batchSize, ProcessingOutcome expected, ClaimTiming claimTiming = ClaimTiming.BeforeHandler)
{
    scenarioCpu = CpuMeter.Now();
    var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench", ClaimTiming = claimTiming });
    // Batch transactions are big: as many in flight as the batched ceiling's connections (4), not one per partition,
    // or concurrent batches queue on each other's row locks.
    var concurrency = batchSize > 1 ? BatchConcurrency : Partitions;
    // batchSize 0: every option at the library's default.
    var options = batchSize == 0
        ? new KafkaIdempotencyOptions<byte[], byte[]>()
        : new KafkaIdempotencyOptions<byte[], byte[]> { BatchSize = batchSize, Concurrency = concurrency, CommitEveryMessages = 1000, CommitInterval = TimeSpan.FromSeconds(1), MaxBufferedMessagesPerPartition = 5000 };
    options.Topics.Add(topic);
    using var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(ConsumerConfig(cluster, "ours-" + Guid.NewGuid().ToString("N")[..8]), processor, options);
    var latencies = new ConcurrentBag<double>();
    long done = 0;
    long unexpected = 0;
    long first = 0;
    var finished = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    consumer.DurationObserver = (n, elapsed) =>
    {
        Interlocked.CompareExchange(ref first, Stopwatch.GetTimestamp() - (long)(elapsed.TotalSeconds * Stopwatch.Frequency), 0);
        for (var i = 0; i < n; i++)
        {
            latencies.Add(elapsed.TotalMilliseconds);
        }
    };
    consumer.ResultObserver = result =>
    {
        if (result.Outcome != expected)
        {
            Interlocked.Increment(ref unexpected);
        }

        if (Interlocked.Increment(ref done) == count)
        {
            finished.TrySetResult();
        }
    };
    using var stop = new CancellationTokenSource();
    var loop = consumer.RunAsync(stop.Token);
    await finished.Task.WaitAsync(TimeSpan.FromMinutes(3));
    var elapsed = Stopwatch.GetElapsedTime(first);
    stop.Cancel();
    await loop;
    if (unexpected > 0)
    {
        throw new InvalidOperationException($"{name}: {unexpected} results were not {expected}");
    }

    return Measured(name, done, elapsed, latencies);
}

// Low load: one message in flight. The consumer runs; the producer sends one message, waits until PostgreSQL reports its
// effect committed (NOTIFY from the commit clock's trigger, delivered only after COMMIT), then sends the next.
// Latency = the commit stamp - the producer's clock just before Produce (the same host clock for both).
async Task<Run> LowLoad(string name, MockKafkaCluster cluster, bool ours, int batchSize = 0)
{
    const int WarmUp = 50;
    fetchWaitMaxMs = 5; // the same for plain and ours: a lone message is fetched at once
    var table = await clock.BusinessTableAsync(notify: true);
    var topic = "low-" + Guid.NewGuid().ToString("N")[..8];
    cluster.CreateTopic(topic, Partitions);
    async Task Write(NpgsqlConnection conn, NpgsqlTransaction tx, string id) =>
        await conn.ExecuteAsync($"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1", new { id }, tx);
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed_low_" + Guid.NewGuid().ToString("N")[..6], OutboxTable = "outbox_low_" + Guid.NewGuid().ToString("N")[..6] });
    await store.EnsureSchemaAsync();
    var consumer = ours
        ? Task.Run(() => Ours("low-load " + name, cluster, topic, WarmUp + lowLoad, store, IdempotentHandler.Create(async (ctx, ct) => await Write(ctx.GetNpgsqlConnection(), ctx.GetNpgsqlTransaction(), ctx.Key)), batchSize, ProcessingOutcome.Processed))
        : Task.Run(() => Plain("low-load " + name, cluster, topic, WarmUp + lowLoad, table, concurrent: true, Write));
    using var producer = new ProducerBuilder<byte[]?, byte[]?>(new ProducerConfig { BootstrapServers = cluster.BootstrapServers, LingerMs = 0 }).Build();
    void Send(string id)
    {
        var key = Encoding.UTF8.GetBytes(id);
        producer.Produce(topic, new Message<byte[]?, byte[]?> { Key = key, Value = Encoding.UTF8.GetBytes($"{{\"id\":\"{id}\",\"amount\":5}}"), Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, key } } });
        producer.Flush(TimeSpan.FromSeconds(30));
    }

    for (var i = 0; i < WarmUp; i++)
    {
        Send("w-" + Guid.NewGuid().ToString("N"));
    }

    await clock.WaitForEffectsAsync(table, WarmUp, TimeSpan.FromMinutes(3), name);
    var published = new Dictionary<string, DateTime>(lowLoad);
    await using (var listener = await clock.ListenAsync(table))
    {
        for (var i = 0; i < lowLoad; i++)
        {
            var id = Guid.NewGuid().ToString();
            var committed = listener.Expect(id);
            published[id] = DateTime.UtcNow;
            Send(id);
            await committed.WaitAsync(TimeSpan.FromMinutes(1));
        }
    }

    await consumer.WaitAsync(TimeSpan.FromMinutes(3));
    fetchWaitMaxMs = ThroughputFetchWaitMaxMs;
    return await clock.MeasureAsync(table, WarmUp + lowLoad, published, double.NaN, "low-load " + name);
}

static double Pct(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, Math.Max(0, (int)Math.Ceiling(p * sorted.Length) - 1))];

ConsumerConfig ConsumerConfig(MockKafkaCluster cluster, string group) => new()
{
    FetchWaitMaxMs = fetchWaitMaxMs,
    BootstrapServers = cluster.BootstrapServers,
    GroupId = group,
    AutoOffsetReset = AutoOffsetReset.Earliest,
    SessionTimeoutMs = 6000,
    FetchMaxBytes = 52_428_800,
    QueuedMaxMessagesKbytes = 65_536,
};

static void Produce(MockKafkaCluster cluster, string topic, int count, string prefix) =>
    KafkaLoad.Produce(cluster.BootstrapServers, topic, Enumerable.Range(0, count).Select(i =>
        (Encoding.UTF8.GetBytes($"{prefix}-{i}"), Encoding.UTF8.GetBytes($"{{\"id\":\"{prefix}-{i}\",\"amount\":1}}"))));

Row Measured(string name, long count, TimeSpan elapsed, ConcurrentBag<double> latencies)
{
    var now = CpuMeter.Now();
    var (clientCpu, postgresCpu) = now.PerMessageSince(scenarioCpu, count);
    var (allocated, gcPause) = now.MemorySince(scenarioCpu, count, elapsed);
    var sorted = latencies.Order().ToArray();
    double Percentile(double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
    var row = new Row(name, count, Math.Round(count / elapsed.TotalSeconds), Math.Round(Percentile(0.50), 2), Math.Round(Percentile(0.99), 2), Process.GetCurrentProcess().PeakWorkingSet64 / (1024 * 1024), clientCpu, postgresCpu) { AllocatedBytesPerMessage = allocated, GcPausePercent = gcPause };
    Console.WriteLine($"  {row.Name}: {row.MessagesPerSecond:N0}/s p50 {row.P50Ms} ms p99 {row.P99Ms} ms, CPU/msg client {clientCpu} µs, PostgreSQL {postgresCpu} µs, {allocated} B/msg allocated, GC pauses {gcPause} %, {now.JitMethods - scenarioCpu.JitMethods} methods compiled by the JIT");
    return row;
}

static void Report(List<Row> rows, List<LowLoadRow> lowLoadRows, int rounds, int lowLoad, string loadStart, int batchConcurrency)
{
    double Rate(string prefix) => rows.First(r => r.Name.StartsWith(prefix, StringComparison.Ordinal)).MessagesPerSecond;
    double Cpu(string prefix) => rows.First(r => r.Name.StartsWith(prefix, StringComparison.Ordinal)).ClientCpuMicrosecondsPerMessage;
    var perMessage = Rate("ours per-message");
    var batch = Rate("ours batch mode");
    var plain = Rate("plain at-least-once, 16");
    var byDefault = Rate("ours default options");
    var ceiling16 = Rate("ceiling: claim + update tx, 16");
    var ceilingBatch = Rate("ceiling: 100-key batch");
    var atCommit = Rate("ours per-message, claim at commit");
    var handKey = Rate("hand-written: plain consumer + key-row");
    var handBatch = Rate("hand-written: plain consumer + 100-key");
    var ratios = new List<Ratio>
    {
        new("ours default options (natural batching) / plain (16 partitions concurrent)", byDefault / plain, 1.0),
        new("client CPU per message: plain / ours default (target: default <= plain)", Cpu("plain at-least-once, 16") / Cpu("ours default options"), 1.0),
        new("claim + update ceiling / update-only ceiling, 16 conn (the SQL 'plain transaction + key-row insert' / plain transaction)", ceiling16 / Rate("ceiling: update-only tx"), null),
        new("ours per-message / plain (16 partitions concurrent)", perMessage / plain, null),
        new("ours per-message (batching off, claim before handler) / hand-written key-row consumer", perMessage / handKey, 0.95),
        new("ours per-message, claim at commit / plain (16 partitions concurrent)", atCommit / plain, null),
        new("ours per-message, claim at commit (batching off) / hand-written key-row consumer", atCommit / handKey, 0.95),
        new("ours batch, set-based handler / hand-written 100-key batch consumer", batch / handBatch, 0.8),
        new("ours per-message / broker-free claim + update ceiling, 16 conn (context: includes no broker)", perMessage / ceiling16, null),
        new("ours per-message, claim at commit / broker-free claim + update ceiling, 16 conn (context: includes no broker)", atCommit / ceiling16, null),
        new("ours batch, set-based handler / broker-free 100-key batch ceiling, 4 conn (context: includes no broker)", batch / ceilingBatch, null),
        new("hand-written key-row consumer / broker-free claim + update ceiling, 16 conn (what the broker costs)", handKey / ceiling16, null),
        new("hand-written batch consumer / broker-free 100-key batch ceiling, 4 conn (what the broker costs)", handBatch / ceilingBatch, null),
        new("client CPU per message: hand-written key-row consumer / ours per-message", Cpu("hand-written: plain consumer + key-row") / Cpu("ours per-message"), null),
        new("client CPU per message: hand-written batch consumer / ours batch", Cpu("hand-written: plain consumer + 100-key") / Cpu("ours batch mode"), null),
        new("replay / new, default options", Rate("ours replay (all duplicates), default") / byDefault, 3),
        new("replay / new, per-message", Rate("ours replay (all duplicates), per-message") / perMessage, 3),
        new("replay / new, per-message, claim at commit", Rate("ours replay (all duplicates), per-message, claim at commit") / atCommit, 3),
        new("replay / new, batch mode", Rate("ours replay (all duplicates), batch") / batch, null),
    };
    if (lowLoadRows.Count >= 2)
    {
        // Lower is better: shown as (plain p99 + 2 ms) / default p99, met when >= 1.
        ratios.Add(new($"low load: (plain p99 + 2 ms) / default p99 = ({lowLoadRows[0].P99Ms:0.00} + 2) / {lowLoadRows[1].P99Ms:0.00}", (lowLoadRows[0].P99Ms + 2) / lowLoadRows[1].P99Ms, 1.0));
    }

    var md = new StringBuilder();
    md.AppendLine(CultureInfo.InvariantCulture, $"# Kafka adapter benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, librdkafka mock cluster + local PostgreSQL)");
    md.AppendLine();
    md.AppendLine(CultureInfo.InvariantCulture, $"Consumer scenarios in {rounds} interleaved rounds (every consumer with fetch.wait.max.ms = {ThroughputFetchWaitMaxMs}) after one unreported warm-up round (each row is the scenario's median round by msgs/s; every round's msgs/s in the last column); ceilings, the processor alone and consume-only once. Every consumer run's effects are checked in SQL (sum of applied updates == messages; the hand-written consumers' key rows == messages). The hand-written rows are the baselines of the batching-off and set-based targets: the plain consumer (same poll loop, 16 partitions concurrent, offsets stored after the commit) doing the claim + update ceiling's transaction per message (`BEGIN; INSERT INTO keys ... ON CONFLICT DO NOTHING;` the `UPDATE` if a row was inserted, `COMMIT`), and the same consumer taking up to 100 ready messages of a partition per transaction with {batchConcurrency} transactions at once like ours batch mode (the 100-key ceiling's key-row insert and the batch handler's set-based update, no wait for a batch to fill). The ceilings are broker-free SQL loops: context, no target. Machine load average: {loadStart} at the start, {LoadAverage()} at the end.");
    md.AppendLine();
    md.AppendLine("| scenario | messages | msgs/s | p50 ms | p99 ms | peak working set so far (MiB) | CPU µs/msg: this process | CPU µs/msg: PostgreSQL | allocated B/msg | GC pauses % | rounds msgs/s |");
    md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    foreach (var r in rows)
    {
        md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Messages:N0} | {r.MessagesPerSecond:N0} | {r.P50Ms} | {r.P99Ms} | {r.PeakWorkingSetMiB} | {r.ClientCpuMicrosecondsPerMessage} | {r.PostgresCpuMicrosecondsPerMessage} | {r.AllocatedBytesPerMessage:N0} | {r.GcPausePercent} | {r.Rounds} |");
    }

    md.AppendLine();
    md.AppendLine("Throughput-table latency: ceilings = one transaction; plain = its transaction; ours = the pipeline call (claim, handler, commit) per message, or per batch. The comparable latency (publish -> effect committed, the same for every configuration) is the low-load table. CPU µs/msg of this process includes the in-process mock cluster; allocated B/msg and GC pauses (the share of the window every thread of this process stood still for a collection; workstation GC) are managed memory only, the client library's and ours.");
    md.AppendLine();
    md.AppendLine(CultureInfo.InvariantCulture, $"## Low load: one message in flight ({lowLoad} per scenario per round, all rounds pooled)");
    md.AppendLine();
    md.AppendLine("Latency = the business row's commit stamp (a deferred trigger's `clock_timestamp()` at COMMIT) - the producer's clock just before `Produce`; the producer sends the next message when PostgreSQL's NOTIFY (sent at commit) arrives.");
    md.AppendLine();
    md.AppendLine("| scenario | p50 ms | p99 ms | samples | p99 per round ms |");
    md.AppendLine("|---|---:|---:|---:|---|");
    foreach (var r in lowLoadRows)
    {
        md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.P50Ms:0.00} | {r.P99Ms:0.00} | {r.Samples} | {r.RoundsP99Ms} |");
    }

    md.AppendLine();
    md.AppendLine("| ratio | value | target | met |");
    md.AppendLine("|---|---:|---:|---|");
    foreach (var r in ratios)
    {
        md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Name} | {r.Value:0.00} | {(r.Target is { } t ? $">= {t:0.##}" : "-")} | {(r.Target is { } t2 ? (r.Value >= t2 ? "yes" : "NO") : "-")} |");
    }

    Console.WriteLine();
    Console.WriteLine(md);
    var dir = FindResultsDirectory();
    File.WriteAllText(Path.Combine(dir, "kafka.md"), md.ToString());
    File.WriteAllText(Path.Combine(dir, "kafka.json"), JsonSerializer.Serialize(new { rows, lowLoad = lowLoadRows, ratios, rounds, cores = Environment.ProcessorCount, loadStart, loadEnd = LoadAverage(), utc = DateTime.UtcNow }, new JsonSerializerOptions { WriteIndented = true, NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals }));
    Console.WriteLine($"written to {dir}/kafka.md and kafka.json");
}

static string FindResultsDirectory()
{
    var dir = new DirectoryInfo(AppContext.BaseDirectory);
    while (dir is not null && !Directory.Exists(Path.Combine(dir.FullName, "benchmarks")))
    {
        dir = dir.Parent;
    }

    var results = Path.Combine(dir?.FullName ?? ".", "benchmarks", "results");
    Directory.CreateDirectory(results);
    return results;
}

internal sealed record Row(string Name, long Messages, double MessagesPerSecond, double P50Ms, double P99Ms, long PeakWorkingSetMiB, double ClientCpuMicrosecondsPerMessage, double PostgresCpuMicrosecondsPerMessage)
{
    /// <summary>Gets every round's msgs/s (interleaved rounds; the row is the median round).</summary>
    public string Rounds { get; init; } = "";

    /// <summary>Gets the managed bytes this process allocated per message.</summary>
    public double AllocatedBytesPerMessage { get; init; }

    /// <summary>Gets the share (%) of the measured window this process spent paused for garbage collection.</summary>
    public double GcPausePercent { get; init; }
}

/// <summary>Low-load latency (publish -> effect committed), every round's samples pooled.</summary>
internal sealed record LowLoadRow(string Name, double P50Ms, double P99Ms, int Samples, string RoundsP99Ms);

internal sealed record Ratio(string Name, double Value, double? Target);
