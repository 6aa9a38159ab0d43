using System.Text;
using Confluent.Kafka;
using Idempotency.Demo.Kafka;
using Idempotency.Kafka;

namespace Idempotency.Demo.Scenarios;

/// <summary>
/// Kafka on librdkafka's mock cluster (started in this process). A crash stops the consumer without committing any
/// offset (the adapter's <c>CommitOnShutdown</c> hook, off: like a process that died before its commit): everything
/// after the group's last lazy commit is read again by the next consumer of the group, and skipped as duplicates.
/// </summary>
internal sealed class KafkaScenario : IDemoScenario, IDisposable
{
    private const int Partitions = 6;
    private readonly Lazy<MockKafkaCluster> _cluster = new(() => MockKafkaCluster.Start());
    private readonly Inner _inner;

    public KafkaScenario() => _inner = new Inner(this);

    public string Broker => "kafka";

    private MockKafkaCluster Cluster => _cluster.Value;

    public Task<DemoRow> RunAsync(Ledgers.IDemoLedger ledger, Workload workload, int crashes, Action<double> progress, CancellationToken cancellationToken) =>
        _inner.RunAsync(ledger, workload, crashes, progress, cancellationToken);

    public void Dispose()
    {
        if (_cluster.IsValueCreated)
        {
            _cluster.Value.Dispose();
        }
    }

    private sealed class Inner(KafkaScenario outer) : BrokerScenario
    {
        private long _produced;

        public override string Broker => "kafka";

        protected override async Task ProduceAsync(string name, Workload workload, CancellationToken cancellationToken)
        {
            outer.Cluster.CreateTopic(name, Partitions);
            using var producer = new ProducerBuilder<byte[], byte[]>(new ProducerConfig { BootstrapServers = outer.Cluster.BootstrapServers, Acks = Acks.All, LingerMs = 5 }).Build();
            var failures = 0;
            foreach (var (key, body) in workload.Messages)
            {
                // The adapter's default key source: the idempotency-key header. A re-send is a new record, new offset.
                producer.Produce(name, new Message<byte[], byte[]>
                {
                    Key = Encoding.UTF8.GetBytes(key),
                    Value = body,
                    Headers = [new Header("idempotency-key", Encoding.UTF8.GetBytes(key))],
                }, report =>
                {
                    if (report.Error.IsError)
                    {
                        Interlocked.Increment(ref failures);
                    }
                });
            }

            producer.Flush(cancellationToken);
            if (failures > 0)
            {
                throw new InvalidOperationException($"{failures} Kafka produce requests failed.");
            }

            _produced = workload.Messages.Count;
            await Task.CompletedTask;
        }

        protected override Task<IConsumerRun> StartConsumerAsync(string name, IdempotentProcessor processor, CancellationToken cancellationToken)
        {
            var options = new KafkaIdempotencyOptions<byte[], byte[]> { ShutdownTimeout = TimeSpan.FromSeconds(1) };
            options.Topics.Add(name);
            var config = new ConsumerConfig
            {
                BootstrapServers = outer.Cluster.BootstrapServers,
                GroupId = name,
                AutoOffsetReset = AutoOffsetReset.Earliest,
                SessionTimeoutMs = 6000,
            };
            var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(config, processor, options);
            var stop = new CancellationTokenSource();
            var running = consumer.RunAsync(stop.Token);
            return Task.FromResult<IConsumerRun>(new Run(consumer, stop, running));
        }

        protected override async Task<bool> IsDrainedAsync(string name, CancellationToken cancellationToken) =>
            await outer.Cluster.CommittedTotalAsync(name, name, Partitions) >= _produced;

        private sealed class Run(IdempotentKafkaConsumer<byte[], byte[]> consumer, CancellationTokenSource stop, Task running) : IConsumerRun
        {
            public async Task CrashAsync()
            {
                consumer.CommitOnShutdown = false;
                await StopAsync();
            }

            public async Task StopAsync()
            {
                await stop.CancelAsync();
                try
                {
                    await running;
                }
                catch (Exception)
                {
                    // A crashed consumer may end with an error; what matters is what it committed.
                }
            }

            public ValueTask DisposeAsync()
            {
                consumer.Dispose();
                stop.Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }
}
