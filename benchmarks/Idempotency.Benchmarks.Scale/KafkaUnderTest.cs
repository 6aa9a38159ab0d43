using Idempotency.Benchmarks.Shared;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using Confluent.Kafka;
using Confluent.Kafka.Admin;
using Idempotency;
using Idempotency.Kafka;
using Idempotency.Kafka.Tests;
using Npgsql;

/// <summary>
/// Kafka: a topic of 16 partitions on librdkafka's mock cluster, hosted by a process of its own (the "kafka-host"
/// child, which also produces the messages), consumed by one consumer group of IdempotentKafkaConsumer processes with
/// the library's default options, connected over TCP.
/// </summary>
internal sealed class KafkaUnderTest(int unique, ChildProcess host, string bootstrapServers, IAdminClient admin) : IBrokerUnderTest
{
    /// <summary>Partitions of every run's topic.</summary>
    public const int Partitions = 16;

    private readonly Dictionary<string, int> _totals = [];
    private readonly List<string> _productionTimes = [];
    private readonly HashSet<string> _producing = [];

    public string Name => "Kafka";

    public int Unique => unique;

    public string Setup => $"a {Partitions}-partition topic on librdkafka's mock cluster (3 brokers) in a host process of its own, which produces the messages (Kafka key and idempotency-key header = the key, so a copy lands on its original's partition) once every consumer process has its partitions; the processes are one consumer group, each an IdempotentKafkaConsumer with default options (Concurrency 16, natural batching: up to 100 fetched messages of a partition per transaction, per-message handler; offsets committed every 500 messages or 1 s)";

    public string CpuSource => "the mock cluster's host process: its 3 brokers and the producer";

    /// <summary>Gets how long the host took to produce each run's messages (it produces while the consumers consume).</summary>
    public IReadOnlyList<string> ProductionTimes => _productionTimes;

    public static async Task<KafkaUnderTest> StartAsync(int unique)
    {
        var host = ChildProcess.Start(["kafka-host"]);
        var line = await host.ReadUntilAsync("bootstrap ", TimeSpan.FromMinutes(1));
        var bootstrap = line["bootstrap ".Length..];
        var admin = new AdminClientBuilder(new AdminClientConfig { BootstrapServers = bootstrap }).Build();
        return new KafkaUnderTest(unique, host, bootstrap, admin);
    }

    /// <summary>
    /// The host process: starts the mock cluster, prints its bootstrap servers, then creates topics and produces runs
    /// on request (lines "topic NAME PARTITIONS", "produce TOPIC UNIQUE") until "stop".
    /// </summary>
    public static int RunHost()
    {
        using var cluster = MockKafkaCluster.StartMock(3);
        Console.WriteLine("bootstrap " + cluster.BootstrapServers);
        while (Console.ReadLine() is { } line && line != "stop")
        {
            var parts = line.Split(' ');
            if (parts[0] == "topic")
            {
                cluster.CreateTopic(parts[1], int.Parse(parts[2], CultureInfo.InvariantCulture));
                Console.WriteLine("ok");
            }
            else if (parts[0] == "produce")
            {
                var clock = Stopwatch.StartNew();
                var total = Produce(cluster.BootstrapServers, parts[1], Workload.Sends(int.Parse(parts[2], CultureInfo.InvariantCulture)));
                Console.WriteLine(FormattableString.Invariant($"produced {total} {clock.Elapsed.TotalSeconds:0.00}"));
            }
        }

        return 0;
    }

    /// <summary>A consumer process: joins the group at once, reports its assignment on every change, stops on stop.</summary>
    public static async Task<int> RunConsumerAsync(NpgsqlDataSource dataSource, string schema, string bootstrapServers, string topic, string group)
    {
        var options = new KafkaIdempotencyOptions<byte[], byte[]>();
        options.Topics.Add(topic);
        var config = new ConsumerConfig { BootstrapServers = bootstrapServers, GroupId = group, AutoOffsetReset = AutoOffsetReset.Earliest };
        using var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(config, Workload.CreateProcessor(dataSource, schema), options);
        using var stop = new CancellationTokenSource();
        Console.WriteLine("ready");
        var run = consumer.RunAsync(stop.Token);
        var reporter = Task.Run(async () =>
        {
            var last = -1;
            while (!stop.IsCancellationRequested)
            {
                var assigned = consumer.Consumer.Assignment.Count;
                if (assigned != last)
                {
                    Console.WriteLine("assigned " + assigned.ToString(CultureInfo.InvariantCulture));
                    last = assigned;
                }

                await Task.Delay(100);
            }
        });
        _ = Console.ReadLine(); // "stop"
        await stop.CancelAsync();
        await run;
        await reporter;
        return 0;
    }

    public async Task PrepareAsync(string runId, IReadOnlyList<string> sends)
    {
        _totals[runId] = sends.Count;
        await host.SendAsync(FormattableString.Invariant($"topic {Topic(runId)} {Partitions}"));
        await host.ReadUntilAsync("ok", TimeSpan.FromMinutes(1));
    }

    public IEnumerable<string> ConsumerArguments(string runId) => ["--kafka", bootstrapServers, "--topic", Topic(runId), "--group", Topic(runId)];

    public async Task WaitForConsumersAsync(IReadOnlyList<ChildProcess> consumers)
    {
        // Each process must hold its even share of the partitions: the group has settled, no rebalance in the run.
        var share = Partitions / consumers.Count;
        var assigned = new int[consumers.Count];
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
        while (assigned.Any(a => a != share))
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"the group did not settle: assignments {string.Join(", ", assigned)}, expected {share} each");
            }

            for (var i = 0; i < consumers.Count; i++)
            {
                while (consumers[i].TryReadLine(out var line))
                {
                    if (line.StartsWith("assigned ", StringComparison.Ordinal))
                    {
                        assigned[i] = int.Parse(line["assigned ".Length..], CultureInfo.InvariantCulture);
                    }
                }
            }

            await Task.Delay(100);
        }
    }

    public async Task StartAsync(string runId, IReadOnlyList<ChildProcess> consumers)
    {
        _producing.Add(runId);
        await host.SendAsync(FormattableString.Invariant($"produce {Topic(runId)} {unique}"));
    }

    public async Task<long> PendingAsync(string runId)
    {
        var request = new ConsumerGroupTopicPartitions(Topic(runId), [.. Enumerable.Range(0, Partitions).Select(p => new TopicPartition(Topic(runId), p))]);
        var results = await admin.ListConsumerGroupOffsetsAsync([request]);
        var committed = results[0].Partitions.Sum(p => Math.Max(0, p.Offset.Value));
        return _totals[runId] - committed;
    }

    public double CpuSeconds() => host.CpuSeconds;

    /// <summary>Reads the host's "produced" line of a run (after the run: it produced while the consumers consumed).</summary>
    public async Task CleanupAsync(string runId)
    {
        if (!_producing.Remove(runId))
        {
            return;
        }

        var line = await host.ReadUntilAsync("produced ", TimeSpan.FromMinutes(1));
        _productionTimes.Add(line.Split(' ')[2] + " s");
    }

    public async ValueTask DisposeAsync()
    {
        admin.Dispose();
        await host.StopAsync();
        host.Dispose();
    }

    private static string Topic(string runId) => "scale-" + runId;

    private static int Produce(string bootstrapServers, string topic, List<string> sends)
    {
        var body = Encoding.UTF8.GetBytes(Workload.Body);
        return KafkaLoad.Produce(bootstrapServers, topic, sends.Select(send => (Encoding.UTF8.GetBytes(send), body)));
    }
}
