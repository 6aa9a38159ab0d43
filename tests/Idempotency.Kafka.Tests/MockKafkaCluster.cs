using System.Runtime.InteropServices;
using System.Text;
using Confluent.Kafka;
using Confluent.Kafka.Admin;

namespace Idempotency.Kafka.Tests;

/// <summary>
/// A Kafka cluster for tests: librdkafka's mock cluster (3 brokers on random 127.0.0.1 ports, created in this process
/// through librdkafka's mock API), or a real cluster when <c>KAFKA_BOOTSTRAP_SERVERS</c> is set. The real
/// Confluent.Kafka clients talk to either over TCP, so other processes can connect to <see cref="BootstrapServers"/> too.
/// </summary>
/// <remarks>
/// Fault injection (<see cref="SetBrokerDown"/>, <see cref="PushRequestErrors"/>) exists only on the mock cluster;
/// check <see cref="IsMock"/> first. Also linked into the Kafka benchmark, so it must not depend on xunit.
/// </remarks>
public sealed class MockKafkaCluster : IDisposable
{
    /// <summary>The variable that points the tests at a real cluster instead.</summary>
    public const string BootstrapVariable = "KAFKA_BOOTSTRAP_SERVERS";

    /// <summary>Kafka protocol API keys, for <see cref="PushRequestErrors"/>.</summary>
    public const short ApiProduce = 0, ApiFetch = 1, ApiOffsetCommit = 8, ApiOffsetFetch = 9, ApiHeartbeat = 12, ApiJoinGroup = 11, ApiSyncGroup = 14;

    // On Debian 12 Confluent.Kafka loads the redist's centos8 build (the default one needs libsasl2.so.3); the mock API
    // must be called in that same library, so the import names it.
    private const string Lib = "centos8-librdkafka";

    private readonly object _gate = new();
    private IntPtr _handle;
    private IntPtr _cluster;

    private MockKafkaCluster(string bootstrapServers, IntPtr handle, IntPtr cluster, int brokerCount)
    {
        BootstrapServers = bootstrapServers;
        _handle = handle;
        _cluster = cluster;
        BrokerCount = brokerCount;
    }

    /// <summary>Gets the bootstrap servers string.</summary>
    public string BootstrapServers { get; }

    /// <summary>Gets a value indicating whether this is librdkafka's mock cluster (fault injection available).</summary>
    public bool IsMock => _cluster != IntPtr.Zero;

    /// <summary>Gets the number of brokers (ids 1..N on the mock cluster).</summary>
    public int BrokerCount { get; }

    /// <summary>Starts a mock cluster, or connects to the real one named by <c>KAFKA_BOOTSTRAP_SERVERS</c>.</summary>
    /// <param name="brokers">Brokers of the mock cluster.</param>
    /// <returns>The cluster.</returns>
    public static MockKafkaCluster Start(int brokers = 3)
    {
        var real = Environment.GetEnvironmentVariable(BootstrapVariable);
        if (!string.IsNullOrWhiteSpace(real))
        {
            return new MockKafkaCluster(real, IntPtr.Zero, IntPtr.Zero, 0);
        }

        return StartMock(brokers);
    }

    /// <summary>Starts librdkafka's mock cluster whatever the environment says.</summary>
    /// <param name="brokers">Number of brokers.</param>
    /// <returns>The cluster.</returns>
    public static MockKafkaCluster StartMock(int brokers = 3)
    {
        // Make sure Confluent.Kafka has loaded (and chosen) the native library before the first P/Invoke.
        _ = Library.Version;
        var conf = rd_kafka_conf_new();
        var errors = new StringBuilder(512);
        var handle = rd_kafka_new(0, conf, errors, (UIntPtr)errors.Capacity);
        if (handle == IntPtr.Zero)
        {
            throw new InvalidOperationException("rd_kafka_new failed: " + errors);
        }

        var cluster = rd_kafka_mock_cluster_new(handle, brokers);
        if (cluster == IntPtr.Zero)
        {
            rd_kafka_destroy(handle);
            throw new InvalidOperationException("rd_kafka_mock_cluster_new failed");
        }

        // Without this a new group waits 3 s before its first assignment.
        rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        var bootstrap = Marshal.PtrToStringUTF8(rd_kafka_mock_cluster_bootstraps(cluster))
            ?? throw new InvalidOperationException("The mock cluster has no bootstrap string.");
        return new MockKafkaCluster(bootstrap, handle, cluster, brokers);
    }

    /// <summary>Creates a topic (on the mock directly, on a real cluster through the admin client).</summary>
    /// <param name="topic">Name.</param>
    /// <param name="partitions">Partitions.</param>
    public void CreateTopic(string topic, int partitions)
    {
        if (IsMock)
        {
            lock (_gate)
            {
                var error = rd_kafka_mock_topic_create(_cluster, topic, partitions, Math.Min(3, BrokerCount));
                if (error != 0)
                {
                    throw new InvalidOperationException($"rd_kafka_mock_topic_create({topic}) failed with error {error}");
                }
            }

            return;
        }

        using var admin = new AdminClientBuilder(new AdminClientConfig { BootstrapServers = BootstrapServers }).Build();
        try
        {
            admin.CreateTopicsAsync([new TopicSpecification { Name = topic, NumPartitions = partitions, ReplicationFactor = -1 }]).GetAwaiter().GetResult();
        }
        catch (CreateTopicsException e) when (e.Results.All(r => r.Error.Code == ErrorCode.TopicAlreadyExists))
        {
        }
    }

    /// <summary>Takes a broker down (it stops answering).</summary>
    /// <param name="brokerId">1-based broker id.</param>
    public void SetBrokerDown(int brokerId) => Check(rd_kafka_mock_broker_set_down(RequireMock(), brokerId), "broker_set_down");

    /// <summary>Brings a broker back up.</summary>
    /// <param name="brokerId">1-based broker id.</param>
    public void SetBrokerUp(int brokerId) => Check(rd_kafka_mock_broker_set_up(RequireMock(), brokerId), "broker_set_up");

    /// <summary>
    /// Delays every response of a broker (0 restores it). Unlike <see cref="SetBrokerDown"/> the broker keeps its
    /// listening socket: bringing a broker up re-binds its port, which aborts the process (a librdkafka assertion) if a
    /// client connection took that port as its local port meanwhile, a race that busy test runs do hit.
    /// </summary>
    /// <param name="brokerId">1-based broker id.</param>
    /// <param name="rttMilliseconds">The delay.</param>
    public void SetBrokerRtt(int brokerId, int rttMilliseconds) => Check(rd_kafka_mock_broker_set_rtt(RequireMock(), brokerId, rttMilliseconds), "broker_set_rtt");

    /// <summary>Makes the next requests of one API fail with the given errors, one error per request, in order.</summary>
    /// <param name="apiKey">The API key (<see cref="ApiFetch"/>, <see cref="ApiOffsetCommit"/>...).</param>
    /// <param name="errors">The errors.</param>
    public void PushRequestErrors(short apiKey, params ErrorCode[] errors)
    {
        var codes = errors.Select(e => (int)e).ToArray();
        rd_kafka_mock_push_request_errors_array(RequireMock(), apiKey, (UIntPtr)codes.Length, codes);
    }

    /// <summary>Drops the errors pushed for one API that no request has taken yet.</summary>
    /// <param name="apiKey">The API key.</param>
    public void ClearRequestErrors(short apiKey) => rd_kafka_mock_clear_request_errors(RequireMock(), apiKey);

    /// <summary>Builds a producer for this cluster.</summary>
    /// <returns>The producer.</returns>
    public IProducer<byte[]?, byte[]?> CreateProducer() =>
        new ProducerBuilder<byte[]?, byte[]?>(new ProducerConfig { BootstrapServers = BootstrapServers, Acks = Acks.All, LingerMs = 5 }).Build();

    /// <summary>Reads the offsets a group committed, with the admin client.</summary>
    /// <param name="group">Group id.</param>
    /// <param name="topic">Topic.</param>
    /// <param name="partitions">Partition count.</param>
    /// <returns>Committed offset per partition (-1001 when none).</returns>
    public async Task<long[]> CommittedOffsetsAsync(string group, string topic, int partitions)
    {
        using var admin = new AdminClientBuilder(new AdminClientConfig { BootstrapServers = BootstrapServers }).Build();
        var request = new ConsumerGroupTopicPartitions(group, Enumerable.Range(0, partitions).Select(p => new TopicPartition(topic, p)).ToList());
        var results = await admin.ListConsumerGroupOffsetsAsync([request]).ConfigureAwait(false);
        var offsets = new long[partitions];
        foreach (var tpoe in results[0].Partitions)
        {
            offsets[tpoe.Partition.Value] = tpoe.Offset.Value;
        }

        return offsets;
    }

    /// <summary>Reads each partition's end offset (high watermark).</summary>
    /// <param name="topic">Topic.</param>
    /// <param name="partitions">Partition count.</param>
    /// <returns>End offset per partition.</returns>
    public long[] EndOffsets(string topic, int partitions)
    {
        using var consumer = new ConsumerBuilder<Ignore, Ignore>(new ConsumerConfig { BootstrapServers = BootstrapServers, GroupId = "watermarks-" + Guid.NewGuid().ToString("N") }).Build();
        return Enumerable.Range(0, partitions)
            .Select(p => consumer.QueryWatermarkOffsets(new TopicPartition(topic, p), TimeSpan.FromSeconds(10)).High.Value)
            .ToArray();
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_cluster != IntPtr.Zero)
            {
                rd_kafka_mock_cluster_destroy(_cluster);
                _cluster = IntPtr.Zero;
            }

            if (_handle != IntPtr.Zero)
            {
                rd_kafka_destroy(_handle);
                _handle = IntPtr.Zero;
            }
        }
    }

    private IntPtr RequireMock() => IsMock
        ? _cluster
        : throw new InvalidOperationException("Fault injection needs librdkafka's mock cluster; unset KAFKA_BOOTSTRAP_SERVERS to use it.");

    private static void Check(int error, string what)
    {
        if (error != 0)
        {
            throw new InvalidOperationException($"rd_kafka_mock_{what} failed with error {error}");
        }
    }

#pragma warning disable SYSLIB1054, CA2101, CA1838 // Plain DllImport: the signatures are the ones verified on this machine.
    [DllImport(Lib)]
    private static extern IntPtr rd_kafka_conf_new();

    [DllImport(Lib)]
    private static extern IntPtr rd_kafka_new(int type, IntPtr conf, StringBuilder errstr, UIntPtr errstrSize);

    [DllImport(Lib)]
    private static extern void rd_kafka_destroy(IntPtr rk);

    [DllImport(Lib)]
    private static extern IntPtr rd_kafka_mock_cluster_new(IntPtr rk, int brokerCount);

    [DllImport(Lib)]
    private static extern IntPtr rd_kafka_mock_cluster_bootstraps(IntPtr mcluster);

    [DllImport(Lib)]
    private static extern int rd_kafka_mock_topic_create(IntPtr mcluster, string topic, int partitions, int replicationFactor);

    [DllImport(Lib)]
    private static extern void rd_kafka_mock_group_initial_rebalance_delay_ms(IntPtr mcluster, int ms);

    [DllImport(Lib)]
    private static extern void rd_kafka_mock_push_request_errors_array(IntPtr mcluster, short apiKey, UIntPtr count, int[] errors);

    [DllImport(Lib)]
    private static extern void rd_kafka_mock_clear_request_errors(IntPtr mcluster, short apiKey);

    [DllImport(Lib)]
    private static extern int rd_kafka_mock_broker_set_down(IntPtr mcluster, int brokerId);

    [DllImport(Lib)]
    private static extern int rd_kafka_mock_broker_set_up(IntPtr mcluster, int brokerId);

    [DllImport(Lib)]
    private static extern int rd_kafka_mock_broker_set_rtt(IntPtr mcluster, int brokerId, int rttMs);

    [DllImport(Lib)]
    private static extern void rd_kafka_mock_cluster_destroy(IntPtr mcluster);
#pragma warning restore SYSLIB1054, CA2101, CA1838
}
