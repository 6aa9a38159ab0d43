using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using Confluent.Kafka;
using Idempotency.Kafka;
using Idempotency.Kafka.Tests;

namespace Idempotency.Chaos;

/// <summary>
/// Kafka on librdkafka's mock cluster, hosted in the orchestrator process (3 brokers on loopback ports) and reached
/// over TCP by the child. Faults: one broker stalled (every response 1-3 s late), every broker stalled, injected request
/// errors on OffsetCommit, Fetch and Heartbeat.
/// </summary>
internal sealed class KafkaRig(int partitions = 3) : BrokerRig
{
    private readonly int _partitions = partitions;
    private readonly ConcurrentDictionary<string, ConcurrentBag<TopicPartitionOffset>> _positions = new(StringComparer.Ordinal);
    private MockKafkaCluster? _cluster;
    private string _topic = "";

    private string Group => _topic + "-consumer";

    public override string Name => "kafka";

    /// <summary>
    /// Gets the group session of the child (docs/kafka.md, "Group membership under load"): 6 s, the smallest a broker
    /// accepts by default (<c>group.min.session.timeout.ms</c>), heartbeat every second.
    /// </summary>
    public static int SessionMs => int.TryParse(Environment.GetEnvironmentVariable("CHAOS_KAFKA_SESSION_MS"), out var ms) ? ms : 6000;

    public static int HeartbeatMs => int.TryParse(Environment.GetEnvironmentVariable("CHAOS_KAFKA_HEARTBEAT_MS"), out var ms) ? ms : Math.Max(100, SessionMs / 6);

    /// <summary>
    /// Gets the wait for a kill point: after a SIGKILL the killed member holds its partitions until its session expires
    /// (the mock then needs up to about three sessions: a join round, a sync round that the dead member never answers,
    /// and its expiry's rebalance), so a restarted child's first message comes that late.
    /// </summary>
    public override TimeSpan KillPointWait => TimeSpan.FromMilliseconds((3 * SessionMs) + 3000);

    private MockKafkaCluster Cluster => _cluster ?? throw new InvalidOperationException("not set up");

    private string DeadLetterTopic => _topic + ".dlq";

    public override IReadOnlyList<FaultKind> Faults =>
    [
        // Brokers stall instead of going down: taking a mock broker down and up re-binds its port, and when a client
        // connection took that port meanwhile librdkafka aborts the whole process (seen in busy runs). Connection
        // refusals are covered by KafkaFailureTests, which takes a broker down and up on a quieter cluster.
        new("kafka-broker-stall", async (rng, ct) =>
        {
            var id = rng.Next(1, Cluster.BrokerCount + 1);
            Cluster.SetBrokerRtt(id, rng.Next(1000, 3000));
            try { await Task.Delay(rng.Next(800, 2000), ct); }
            finally { Cluster.SetBrokerRtt(id, 0); }
        }),
        new("kafka-all-brokers-stall", async (rng, ct) =>
        {
            for (var id = 1; id <= Cluster.BrokerCount; id++) Cluster.SetBrokerRtt(id, rng.Next(1000, 3000));
            try { await Task.Delay(rng.Next(800, 2000), ct); }
            finally { for (var id = 1; id <= Cluster.BrokerCount; id++) Cluster.SetBrokerRtt(id, 0); }
        }),
        new("kafka-request-errors", (rng, _) =>
        {
            // Errors a request has not taken yet stay queued on the cluster: at most one round at a time, or a consumer
            // starved of CPU for a while meets a backlog of them (a stall the suite made, not the consumer).
            ClearRequestErrors();
            Cluster.PushRequestErrors(MockKafkaCluster.ApiOffsetCommit, ErrorCode.NotCoordinatorForGroup, ErrorCode.RequestTimedOut, ErrorCode.GroupLoadInProgress);
            Cluster.PushRequestErrors(MockKafkaCluster.ApiFetch, ErrorCode.NotLeaderForPartition, ErrorCode.RequestTimedOut, ErrorCode.NotLeaderForPartition);
            Cluster.PushRequestErrors(MockKafkaCluster.ApiHeartbeat, ErrorCode.NotCoordinatorForGroup);
            return Task.CompletedTask;
        }),
    ];

    /// <summary>The kill phase is over: no injected error or stall outlives it into the settle phase.</summary>
    public override Task EndFaultsAsync()
    {
        ClearRequestErrors();
        for (var id = 1; id <= Cluster.BrokerCount; id++)
        {
            Cluster.SetBrokerRtt(id, 0);
        }

        return Task.CompletedTask;
    }

    private void ClearRequestErrors()
    {
        Cluster.ClearRequestErrors(MockKafkaCluster.ApiOffsetCommit);
        Cluster.ClearRequestErrors(MockKafkaCluster.ApiFetch);
        Cluster.ClearRequestErrors(MockKafkaCluster.ApiHeartbeat);
    }

    public override Task SetupAsync(string runId)
    {
        _cluster = MockKafkaCluster.StartMock(3);
        _topic = "chaos-" + runId;
        Cluster.CreateTopic(_topic, _partitions);
        Cluster.CreateTopic(DeadLetterTopic, 1);
        return Task.CompletedTask;
    }

    public override async Task ProduceAsync(IReadOnlyList<ChaosMessage> messages)
    {
        using var producer = Cluster.CreateProducer();
        var pending = new List<Task>(messages.Count);
        foreach (var m in messages)
        {
            var headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, Encoding.UTF8.GetBytes(m.Key) } };
            pending.Add(Record(m.Key, producer.ProduceAsync(_topic, new Message<byte[]?, byte[]?> { Key = Encoding.UTF8.GetBytes(m.Key), Value = Encoding.UTF8.GetBytes(m.Body), Headers = headers })));
            if (pending.Count >= 500)
            {
                await Task.WhenAll(pending);
                pending.Clear();
            }
        }

        await Task.WhenAll(pending);
    }

    public override void AddChildArgs(IDictionary<string, string> args)
    {
        args["bootstrap"] = Cluster.BootstrapServers;
        args["topic"] = _topic;
        args["group"] = Group;
        args["batch"] = "8";
        args["session-ms"] = SessionMs.ToString(CultureInfo.InvariantCulture);
        args["heartbeat-ms"] = HeartbeatMs.ToString(CultureInfo.InvariantCulture);
    }

    public override void AddDefaultPathChildArgs(IDictionary<string, string> args)
    {
        args["bootstrap"] = Cluster.BootstrapServers;
        args["topic"] = _topic;
        args["group"] = Group;
        args["defaults"] = "1";
    }

    public override Task<IReadOnlyList<string>> ReadDeadLettersAsync()
    {
        var config = new ConsumerConfig
        {
            BootstrapServers = Cluster.BootstrapServers,
            GroupId = "dlq-reader-" + Guid.NewGuid().ToString("N"),
            AutoOffsetReset = AutoOffsetReset.Earliest,
            EnableAutoCommit = false,
            EnablePartitionEof = true,
        };
        using var consumer = new ConsumerBuilder<byte[]?, byte[]?>(config).Build();
        consumer.Assign(new TopicPartitionOffset(DeadLetterTopic, 0, Offset.Beginning));
        var keys = new List<string>();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            var r = consumer.Consume(TimeSpan.FromMilliseconds(500));
            if (r is null)
            {
                continue;
            }

            if (r.IsPartitionEOF)
            {
                break;
            }

            var header = r.Message.Headers?.FirstOrDefault(h => h.Key == KafkaIdempotencyOptions.DefaultKeyHeader);
            var key = header is not null ? Encoding.UTF8.GetString(header.GetValueBytes()) : Encoding.UTF8.GetString(r.Message.Key ?? []);
            if (Environment.GetEnvironmentVariable("CHAOS_DEBUG") == "1")
            {
                Console.Error.WriteLine($"dlq @{r.Offset.Value} key={key} value={Encoding.UTF8.GetString(r.Message.Value ?? [])} headers={string.Join(";", r.Message.Headers?.Select(h => h.Key + "=" + Encoding.UTF8.GetString(h.GetValueBytes())) ?? [])}");
            }

            keys.Add(key);
        }

        consumer.Close();
        return Task.FromResult<IReadOnlyList<string>>(keys);
    }

    public override async Task<string> SnapshotAsync()
    {
        var committed = await Cluster.CommittedOffsetsAsync(Group, _topic, _partitions);
        var end = Cluster.EndOffsets(_topic, _partitions);
        return "group committed / end offset: " + string.Join(", ", Enumerable.Range(0, _partitions).Select(p =>
            string.Create(CultureInfo.InvariantCulture, $"p{p} {(committed[p] < 0 ? "none" : committed[p].ToString(CultureInfo.InvariantCulture))}/{end[p]}")));
    }

    public override async Task<BrokerInspection> InspectAsync(IReadOnlyCollection<string> keys)
    {
        // A message is still deliverable when it is at or after its partition's committed offset (none committed: the
        // group starts from the earliest offset); one copy of a re-sent key is enough.
        var committed = await Cluster.CommittedOffsetsAsync(Group, _topic, _partitions);
        var result = new Dictionary<string, KeyPosition>(StringComparer.Ordinal);
        foreach (var key in keys)
        {
            if (!_positions.TryGetValue(key, out var copies) || copies.IsEmpty)
            {
                result[key] = new KeyPosition(false, "never produced");
                continue;
            }

            var ordered = copies.OrderBy(c => c.Partition.Value).ThenBy(c => c.Offset.Value).ToList();
            var deliverable = ordered.Any(c => committed[c.Partition.Value] < 0 || c.Offset.Value >= committed[c.Partition.Value]);
            var where = string.Join(", ", ordered.Select(c =>
                string.Create(CultureInfo.InvariantCulture, $"partition {c.Partition.Value} offset {c.Offset.Value}, group committed {(committed[c.Partition.Value] < 0 ? "none" : committed[c.Partition.Value].ToString(CultureInfo.InvariantCulture))}")));
            result[key] = new KeyPosition(deliverable, where);
        }

        return new BrokerInspection(result, await SnapshotAsync());
    }

    public override async Task SimulateLossAsync(ChaosMessage lost, ChaosMessage kept)
    {
        // Both on partition 0, lost first; then the group's offset is committed just past lost, as a consumer that
        // acknowledged it without an effect would have done.
        using (var producer = Cluster.CreateProducer())
        {
            foreach (var m in new[] { lost, kept })
            {
                var headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, Encoding.UTF8.GetBytes(m.Key) } };
                await Record(m.Key, producer.ProduceAsync(new TopicPartition(_topic, 0), new Message<byte[]?, byte[]?> { Key = Encoding.UTF8.GetBytes(m.Key), Value = Encoding.UTF8.GetBytes(m.Body), Headers = headers }));
            }
        }

        var lostAt = _positions[lost.Key].Single();
        using var consumer = new ConsumerBuilder<byte[]?, byte[]?>(new ConsumerConfig { BootstrapServers = Cluster.BootstrapServers, GroupId = Group, EnableAutoCommit = false }).Build();
        consumer.Commit([new TopicPartitionOffset(lostAt.TopicPartition, lostAt.Offset + 1)]);
        consumer.Close();
    }

    private async Task Record(string key, Task<DeliveryResult<byte[]?, byte[]?>> delivery)
    {
        var result = await delivery.ConfigureAwait(false);
        _positions.GetOrAdd(key, _ => []).Add(result.TopicPartitionOffset);
    }

    public override ValueTask DisposeAsync()
    {
        _cluster?.Dispose();
        return ValueTask.CompletedTask;
    }

    public static async Task RunKafkaChildAsync(ChildArgs args, IdempotentProcessor processor, Action ready, CancellationToken stop)
    {
        // The soak ("defaults"): the adapter's and librdkafka's defaults; only the brokers, the group and the topic are
        // set, and a new group reads its topic from the start.
        var defaults = args.Get("defaults") is not null;
        var options = defaults ? new KafkaIdempotencyOptions<byte[], byte[]>() : new KafkaIdempotencyOptions<byte[], byte[]>
        {
            BatchSize = int.Parse(args["batch"], System.Globalization.CultureInfo.InvariantCulture),
            CommitEveryMessages = 50,
            CommitInterval = TimeSpan.FromMilliseconds(500),
            PollTimeout = TimeSpan.FromMilliseconds(50),
            ShutdownTimeout = TimeSpan.FromSeconds(5),
            DeadLetterProduceBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(1) },
        };
        options.Topics.Add(args["topic"]);
        var config = defaults ? new ConsumerConfig { BootstrapServers = args["bootstrap"], GroupId = args["group"], AutoOffsetReset = AutoOffsetReset.Earliest } : new ConsumerConfig
        {
            BootstrapServers = args["bootstrap"],
            GroupId = args["group"],
            AutoOffsetReset = AutoOffsetReset.Earliest,
            // Group liveness (docs/kafka.md, "Group membership under load"). A SIGKILLed member stays in the group until
            // its session expires, and the next child waits for that: librdkafka's mock cluster matches rejoining members
            // by member id only, so static membership (group.instance.id), which on a real broker hands the partitions
            // straight back to a restarted replica, does not shorten that wait here. The session is therefore as short as
            // a CPU-starved machine allows: 6 s with a heartbeat every second tolerates five lost or late heartbeats (a
            // starved second is not a rebalance), while 20 kills per scenario still fit the CI budget.
            SessionTimeoutMs = int.Parse(args["session-ms"], CultureInfo.InvariantCulture),
            HeartbeatIntervalMs = int.Parse(args["heartbeat-ms"], CultureInfo.InvariantCulture),
            // The poll loop must come back within this even when a batch runs slowly on a starved CPU (the default, 300 s).
            MaxPollIntervalMs = 300_000,
            TopicMetadataRefreshIntervalMs = 1000,
            ReconnectBackoffMs = 50,
            ReconnectBackoffMaxMs = 500,
        };
        using var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(config, processor, options);
        var run = consumer.RunAsync(stop);
        ready();
        await run.ConfigureAwait(false);
    }
}
