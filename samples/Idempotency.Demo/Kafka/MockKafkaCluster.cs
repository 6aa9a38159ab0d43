using System.Runtime.InteropServices;
using System.Text;
using Confluent.Kafka;
using Confluent.Kafka.Admin;

namespace Idempotency.Demo.Kafka;

/// <summary>
/// librdkafka's mock cluster started in this process through its native mock API: real Kafka protocol over TCP on
/// random 127.0.0.1 ports, consumer groups and offset commits, no broker to install. The real Confluent.Kafka clients
/// talk to it with <see cref="BootstrapServers"/>. (A trimmed copy of the Kafka test suite's helper: a sample must not
/// reference a test project.)
/// </summary>
internal sealed class MockKafkaCluster : IDisposable
{
    // On Debian 12 Confluent.Kafka loads the redist's centos8 build (the default one needs libsasl2.so.3); the mock API
    // must be called in that same library, so the import names it.
    private const string Lib = "centos8-librdkafka";

    private readonly object _gate = new();
    private IntPtr _handle;
    private IntPtr _cluster;

    private MockKafkaCluster(string bootstrapServers, IntPtr handle, IntPtr cluster)
    {
        BootstrapServers = bootstrapServers;
        _handle = handle;
        _cluster = cluster;
    }

    public string BootstrapServers { get; }

    public static MockKafkaCluster Start(int brokers = 3)
    {
        // Make sure Confluent.Kafka has loaded (and chosen) the native library before the first P/Invoke.
        _ = Library.Version;
        var errors = new StringBuilder(512);
        var handle = rd_kafka_new(0, rd_kafka_conf_new(), errors, (UIntPtr)errors.Capacity);
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
        return new MockKafkaCluster(bootstrap, handle, cluster);
    }

    public void CreateTopic(string topic, int partitions)
    {
        lock (_gate)
        {
            var error = rd_kafka_mock_topic_create(_cluster, topic, partitions, 3);
            if (error != 0)
            {
                throw new InvalidOperationException($"rd_kafka_mock_topic_create({topic}) failed with error {error}");
            }
        }
    }

    /// <summary>Sum over partitions of the offsets a group committed (a partition without a commit counts 0).</summary>
    public async Task<long> CommittedTotalAsync(string group, string topic, int partitions)
    {
        using var admin = new AdminClientBuilder(new AdminClientConfig { BootstrapServers = BootstrapServers }).Build();
        var request = new ConsumerGroupTopicPartitions(group, Enumerable.Range(0, partitions).Select(p => new TopicPartition(topic, p)).ToList());
        var results = await admin.ListConsumerGroupOffsetsAsync([request]);
        return results[0].Partitions.Sum(p => Math.Max(0, p.Offset.Value));
    }

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

#pragma warning disable SYSLIB1054, CA2101, CA1838 // Plain DllImport: the signatures verified on this machine.
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
    private static extern void rd_kafka_mock_cluster_destroy(IntPtr mcluster);
#pragma warning restore SYSLIB1054, CA2101, CA1838
}
