using System.Diagnostics;
using Amazon.Runtime;
using Amazon.SQS;
using Amazon.SQS.Model;
using Dapper;
using Idempotency.Benchmarks.Shared;
using Idempotency.Postgres;
using Idempotency.Sqs;
using Npgsql;

namespace Idempotency.Benchmarks.Sqs;

internal static class Scenarios
{
    public const string Plain = "plain";
    public const string OursPerMessage = "ours-message";
    public const string OursPerMessageAtCommit = "ours-message-at-commit";
    public const string OursBatch = "ours-batch";
    public const string OursBatchSet = "ours-batch-set";
    public const string LowLoadPlain = "low-plain";
    public const string LowLoadDefault = "low-ours-batch";

    /// <summary>The low-load runs, plain first then ours with default options (the summary reads them in that order).</summary>
    public static readonly string[] LowLoadScenarios = [LowLoadPlain, LowLoadDefault];

    /// <summary>Longest warm-up of a scenario, in seconds, should the JIT never go quiet.</summary>
    public const int MaxWarmUpSeconds = 30;

    /// <summary>A throughput warm-up round that compiles fewer methods than this ends the warm-up.</summary>
    private const int QuietWarmUpRoundMethods = 20;

    /// <summary>Fewest warm-up messages before a low-load run measures, however fast they go.</summary>
    public const int MinimumLowLoadWarmUp = 20;

    public static async Task<ScenarioResult> RunAsync(string scenario, BenchOptions options)
    {
        var serviceUrl = Environment.GetEnvironmentVariable("IDEMPOTENCY_SQS") ?? throw new InvalidOperationException("IDEMPOTENCY_SQS is not set (scripts/services.sh up).");
        var connectionString = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? throw new InvalidOperationException("IDEMPOTENCY_POSTGRES is not set (scripts/services.sh up).");
        using var sqs = new AmazonSQSClient(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = serviceUrl, AuthenticationRegion = "us-east-1" });
        var timing = TimingSqs.Wrap(sqs);
        await using var dataSource = NpgsqlDataSource.Create(connectionString);
        var schema = "bench_sqs_" + Guid.NewGuid().ToString("N")[..10];
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync($"CREATE SCHEMA {schema}");
        }

        var queues = new List<string>();
        try
        {
            var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = "processed", OutboxTable = "outbox" });
            await store.EnsureSchemaAsync();

            if (scenario is LowLoadPlain or LowLoadDefault)
            {
                return await RunLowLoadAsync(scenario, options.Pollers, options.Messages, sqs, dataSource, store, schema, queues);
            }

            // Warm-up (JIT, pools, HTTP connections): rounds of 500 on fresh queues and tables until one compiles next to
            // nothing, as tiered compilation otherwise runs through the measured messages, and longer for a scenario with
            // more code; then the measured run on a fresh queue and table.
            var warmUpStarted = Stopwatch.GetTimestamp();
            for (var round = 0; ; round++)
            {
                var compiled = System.Runtime.JitInfo.GetCompiledMethodCount();
                await RunOnceAsync(scenario, options.Pollers, 500, $"warm{round}", sqs, timing, dataSource, store, schema, queues);
                if (System.Runtime.JitInfo.GetCompiledMethodCount() - compiled < QuietWarmUpRoundMethods
                    || Stopwatch.GetElapsedTime(warmUpStarted) >= TimeSpan.FromSeconds(MaxWarmUpSeconds))
                {
                    Console.Error.WriteLine($"  {scenario}: warm-up {round + 1} round(s) of 500, {Stopwatch.GetElapsedTime(warmUpStarted).TotalSeconds:0.0} s");
                    break;
                }
            }

            return await RunOnceAsync(scenario, options.Pollers, options.Messages, "run", sqs, timing, dataSource, store, schema, queues);
        }
        finally
        {
            foreach (var queue in queues)
            {
                await sqs.DeleteQueueAsync(queue);
            }

            await using var connection = await dataSource.OpenConnectionAsync();
            await connection.ExecuteAsync($"DROP SCHEMA {schema} CASCADE");
        }
    }

    private static async Task<ScenarioResult> RunOnceAsync(string scenario, int pollers, int count, string phase, AmazonSQSClient sqs, TimingSqs timing,
        NpgsqlDataSource dataSource, PostgresIdempotencyStore store, string schema, List<string> queues)
    {
        var table = $"{schema}.business_{phase}";
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync($"CREATE TABLE {table} (id text PRIMARY KEY, amount bigint NOT NULL DEFAULT 0, applied int NOT NULL DEFAULT 0)");
        }

        var queue = (await sqs.CreateQueueAsync(new CreateQueueRequest { QueueName = $"bench-{scenario}-{phase}-{Guid.NewGuid():N}" })).QueueUrl;
        queues.Add(queue);
        await PreloadAsync(sqs, queue, count, phase);
        var sql = $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1";

        timing.Reset();
        using var stop = new CancellationTokenSource();
        using var sampler = new WorkingSetSampler();
        var started = Stopwatch.GetTimestamp();
        var cpuBefore = Process.GetCurrentProcess().TotalProcessorTime;
        Task run = scenario switch
        {
            Plain => Task.WhenAll(Enumerable.Range(0, pollers).Select(_ => PlainPollerAsync(timing.Client, queue, dataSource, sql, stop.Token))),
            OursPerMessage or OursBatch => RunOursAsync(timing.Client, queue, store, PerMessageHandler(sql), pollers, batch: scenario == OursBatch, stop.Token),
            OursPerMessageAtCommit => RunOursAsync(timing.Client, queue, store, PerMessageHandler(sql), pollers, batch: false, stop.Token, ClaimTiming.AtCommit),
            OursBatchSet => RunOursAsync(timing.Client, queue, store, SetBasedHandler(sql, table), pollers, batch: true, stop.Token),
            _ => throw new ArgumentException($"Unknown scenario {scenario}; use {Plain}, {OursPerMessage} or {OursBatch}."),
        };

        var deadline = Stopwatch.GetTimestamp() + Stopwatch.Frequency * 120;
        while (timing.Deleted < count)
        {
            if (run.IsFaulted || Stopwatch.GetTimestamp() > deadline)
            {
                await stop.CancelAsync();
                throw new InvalidOperationException($"{scenario} did not finish {count} messages (deleted {timing.Deleted})", run.Exception);
            }

            await Task.Delay(5);
        }

        var seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
        var cpuMs = (Process.GetCurrentProcess().TotalProcessorTime - cpuBefore).TotalMilliseconds;
        await stop.CancelAsync();
        await run;
        long rows;
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            rows = await connection.ExecuteScalarAsync<long>($"SELECT count(*) FROM {table}");
        }

        var latencies = timing.LatenciesMs.Order().ToArray();
        return new ScenarioResult(scenario, count, seconds, count / seconds, Percentile(latencies, 0.50), Percentile(latencies, 0.99), sampler.Peak, rows, cpuMs * 1000 / count);
    }

    /// <summary>
    /// One message in flight: each is sent when the previous one's effect committed (PostgreSQL's NOTIFY, sent at
    /// commit), and its latency is the business row's commit stamp - the sender's clock just before SendMessage: the
    /// same definition as the Kafka and RabbitMQ low-load runs. Warm-up traffic first (at least
    /// <see cref="MinimumLowLoadWarmUp"/> messages, until no method was compiled for a second), not measured.
    /// </summary>
    private static async Task<ScenarioResult> RunLowLoadAsync(string scenario, int pollers, int count, AmazonSQSClient sqs,
        NpgsqlDataSource dataSource, PostgresIdempotencyStore store, string schema, List<string> queues)
    {
        // Every scenario runs in a fresh process: the same one-in-flight traffic runs until tiered compilation has
        // promoted the hot code (it goes on for about 10 s of steady calls here, taking most of a core), so the measured
        // messages see warm code as in the Kafka and RabbitMQ low-load runs, which follow a warm-up round in their process.
        var jit = new JitQuiet();
        var clock = new CommitClock(dataSource, schema);
        var table = await clock.BusinessTableAsync(notify: true);
        var queue = (await sqs.CreateQueueAsync(new CreateQueueRequest { QueueName = $"bench-{scenario}-{Guid.NewGuid():N}" })).QueueUrl;
        queues.Add(queue);
        var sql = $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1";
        using var stop = new CancellationTokenSource();
        var run = scenario == LowLoadPlain
            ? Task.WhenAll(Enumerable.Range(0, pollers).Select(_ => PlainPollerAsync(sqs, queue, dataSource, sql, stop.Token)))
            : RunOursAsync(sqs, queue, store, PerMessageHandler(sql), pollers, batch: true, stop.Token);
        var published = new Dictionary<string, DateTime>(count);
        var cpu = TimeSpan.Zero;
        var warmUp = 0;
        var warmUpStarted = Stopwatch.GetTimestamp();
        await using (var listener = await clock.ListenAsync(table))
        {
            while (published.Count < count)
            {
                var measuring = published.Count > 0 || (warmUp >= MinimumLowLoadWarmUp && WarmedUp(warmUpStarted, jit));
                if (measuring && published.Count == 0)
                {
                    cpu = Process.GetCurrentProcess().TotalProcessorTime;
                }

                var id = Guid.NewGuid().ToString();
                var committed = listener.Expect(id);
                if (measuring)
                {
                    published[id] = DateTime.UtcNow;
                }
                else
                {
                    warmUp++;
                }

                await sqs.SendMessageAsync(new SendMessageRequest
                {
                    QueueUrl = queue,
                    MessageBody = $"{{\"Id\":\"{id}\",\"Amount\":1}}",
                    MessageAttributes = new() { ["IdempotencyKey"] = new MessageAttributeValue { DataType = "String", StringValue = id } },
                });
                await committed.WaitAsync(TimeSpan.FromMinutes(1));
                if (run.IsFaulted)
                {
                    await run;
                }
            }
        }

        var cpuUs = (Process.GetCurrentProcess().TotalProcessorTime - cpu).TotalMicroseconds / count;
        await stop.CancelAsync();
        await run;
        var measured = await clock.MeasureAsync(table, warmUp + count, published, cpuUs, scenario);
        return new ScenarioResult(scenario, count, 0, measured.MessagesPerSecond, measured.P50Ms, measured.P99Ms, Process.GetCurrentProcess().PeakWorkingSet64, warmUp + count, cpuUs, LatenciesMs: measured.LatenciesMs);
    }

    /// <summary>Whether warm-up is over: no method compiled for a second, or <see cref="MaxWarmUpSeconds"/> passed.</summary>
    private static bool WarmedUp(long started, JitQuiet jit) =>
        jit.QuietFor() >= TimeSpan.FromSeconds(1) || Stopwatch.GetElapsedTime(started) >= TimeSpan.FromSeconds(MaxWarmUpSeconds);

    /// <summary>Tracks when the JIT last compiled a method (polled by the warm-up loop).</summary>
    private sealed class JitQuiet
    {
        private long _count = System.Runtime.JitInfo.GetCompiledMethodCount();
        private long _changed = Stopwatch.GetTimestamp();

        public TimeSpan QuietFor()
        {
            var count = System.Runtime.JitInfo.GetCompiledMethodCount();
            if (count != _count)
            {
                _count = count;
                _changed = Stopwatch.GetTimestamp();
            }

            return Stopwatch.GetElapsedTime(_changed);
        }
    }

    /// <summary>The baseline: receive up to 10, each message's business write in its own transaction (concurrently), one DeleteMessageBatch.</summary>
    private static async Task PlainPollerAsync(IAmazonSQS sqs, string queue, NpgsqlDataSource dataSource, string sql, CancellationToken stop)
    {
        var request = new ReceiveMessageRequest { QueueUrl = queue, MaxNumberOfMessages = 10, WaitTimeSeconds = 1, VisibilityTimeout = 30, MessageAttributeNames = ["All"], MessageSystemAttributeNames = ["ApproximateReceiveCount"] };
        while (!stop.IsCancellationRequested)
        {
            List<Message>? messages;
            try
            {
                messages = (await sqs.ReceiveMessageAsync(request, stop)).Messages;
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (messages is not { Count: > 0 })
            {
                continue;
            }

            await Task.WhenAll(messages.Select(async message =>
            {
                await using var connection = await dataSource.OpenConnectionAsync();
                await using var transaction = await connection.BeginTransactionAsync();
                await connection.ExecuteAsync(sql, new { id = message.MessageAttributes["IdempotencyKey"].StringValue }, transaction);
                await transaction.CommitAsync();
            }));
            await sqs.DeleteMessageBatchAsync(new DeleteMessageBatchRequest
            {
                QueueUrl = queue,
                Entries = messages.Select((m, i) => new DeleteMessageBatchRequestEntry { Id = i.ToString(System.Globalization.CultureInfo.InvariantCulture), ReceiptHandle = m.ReceiptHandle }).ToList(),
            }, CancellationToken.None);
        }
    }

    /// <summary>The same business write as the plain worker, one statement per message, in the store's transaction.</summary>
    private static IIdempotentMessageHandler PerMessageHandler(string sql) =>
        IdempotentHandler.Create(async (context, _) =>
            await context.GetNpgsqlConnection().ExecuteAsync(sql, new { id = context.Key }, context.GetNpgsqlTransaction()));

    /// <summary>A batch-aware handler: all new messages of a batch in one set-based statement (ids sorted), per-message fallback.</summary>
    private static IIdempotentBatchHandler SetBasedHandler(string sql, string table) =>
        IdempotentHandler.CreateBatch(
            async (batch, _) =>
            {
                var ids = batch.Messages.Select(m => m.Key).Order(StringComparer.Ordinal).ToArray();
                await batch.GetNpgsqlConnection().ExecuteAsync(
                    $"INSERT INTO {table} (id, amount, applied) SELECT id, 1, 1 FROM unnest(@ids) AS u(id) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
                    new { ids }, batch.GetNpgsqlTransaction());
            },
            async (context, _) => await context.GetNpgsqlConnection().ExecuteAsync(sql, new { id = context.Key }, context.GetNpgsqlTransaction()));

    private static async Task RunOursAsync(IAmazonSQS sqs, string queue, PostgresIdempotencyStore store, IIdempotentMessageHandler handler, int pollers, bool batch, CancellationToken stop, ClaimTiming claimTiming = ClaimTiming.BeforeHandler)
    {
        var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "bench", ClaimTiming = claimTiming });
        var worker = new IdempotentSqsWorker(sqs, processor, new SqsIdempotencyOptions
        {
            QueueUrl = queue,
            WaitTimeSeconds = 1,
            Concurrency = pollers,
            VisibilityTimeout = TimeSpan.FromSeconds(30),
            BatchSize = batch ? 10 : 1,
        });
        await worker.RunAsync(stop);
    }

    private static async Task PreloadAsync(AmazonSQSClient sqs, string queue, int count, string phase)
    {
        using var limit = new SemaphoreSlim(8);
        await Task.WhenAll(Enumerable.Range(0, count).Chunk(10).Select(async chunk =>
        {
            await limit.WaitAsync();
            try
            {
                await sqs.SendMessageBatchAsync(new SendMessageBatchRequest
                {
                    QueueUrl = queue,
                    Entries = chunk.Select((n, i) => new SendMessageBatchRequestEntry
                    {
                        Id = i.ToString(System.Globalization.CultureInfo.InvariantCulture),
                        MessageBody = $"{{\"order\":{n},\"amount\":1}}",
                        MessageAttributes = new() { ["IdempotencyKey"] = new MessageAttributeValue { DataType = "String", StringValue = $"{phase}-order-{n}" } },
                    }).ToList(),
                });
            }
            finally
            {
                limit.Release();
            }
        }));
    }

    private static double Percentile(double[] sorted, double p) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)];
}

/// <summary>Samples this process's working set every 20 ms; the child process runs one scenario, so the peak is that scenario's.</summary>
internal sealed class WorkingSetSampler : IDisposable
{
    private readonly Timer _timer;
    private long _peak;

    public WorkingSetSampler()
    {
        Sample();
        _timer = new Timer(_ => Sample(), null, 0, 20);
    }

    public long Peak => Math.Max(Interlocked.Read(ref _peak), Process.GetCurrentProcess().PeakWorkingSet64);

    public void Dispose() => _timer.Dispose();

    private void Sample()
    {
        using var process = Process.GetCurrentProcess();
        var now = process.WorkingSet64;
        long current;
        while ((current = Interlocked.Read(ref _peak)) < now && Interlocked.CompareExchange(ref _peak, now, current) != current)
        {
        }
    }
}
