using System.Text;
using Confluent.Kafka;
using Idempotency.Kafka.Transactions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

/// <summary>Consume-transform-produce with Kafka transactions on the mock cluster.</summary>
public sealed class TransactionalProcessorTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task Read_committed_consumer_sees_each_output_once_across_an_instance_stopped_mid_transaction_and_a_handler_retry()
    {
        using var cluster = MockKafkaCluster.Start();
        var input = Unique("in");
        var output = Unique("out");
        const int partitions = 3;
        cluster.CreateTopic(input, partitions);
        cluster.CreateTopic(output, partitions);
        Produce(cluster, input, Enumerable.Range(0, 300).Select(i => $"order-{i}"));
        var transactionalId = Unique("app-0");
        var group = Unique("g");

        ValueTask Transform(KafkaTransactionContext context)
        {
            var key = Encoding.UTF8.GetString(context.Input.Message.Key);
            context.Produce(output, new Message<byte[], byte[]> { Key = context.Input.Message.Key, Value = Encoding.UTF8.GetBytes("accepted:" + key) });
            return ValueTask.CompletedTask;
        }

        // First incarnation: stopped in the middle of a transaction, right after producing the 100th output.
        var first = new CancellationTokenSource();
        var produced = 0;
        long firstCommitted;
        using (var a = new KafkaTransactionalProcessor(ConsumerConfig(cluster, group), new ProducerConfig { BootstrapServers = cluster.BootstrapServers }, Options(input, transactionalId), async (context, _) =>
        {
            await Transform(context);
            if (Interlocked.Increment(ref produced) == 100)
            {
                await first.CancelAsync();
            }
        }))
        {
            await a.RunAsync(first.Token).WaitAsync(Timeout, TestContext.Current.CancellationToken);
            Assert.True(a.AbortedTransactions >= 1, "the stop must have aborted the open transaction");
            firstCommitted = a.CommittedMessages;
        }

        // Second incarnation, same transactional id and group: its handler fails once, after producing, on a late message.
        var failedOnce = 0;
        using var processor = new KafkaTransactionalProcessor(ConsumerConfig(cluster, group), new ProducerConfig { BootstrapServers = cluster.BootstrapServers }, Options(input, transactionalId), async (context, _) =>
        {
            await Transform(context);
            if (Encoding.UTF8.GetString(context.Input.Message.Key) == "order-250" && Interlocked.Exchange(ref failedOnce, 1) == 0)
            {
                throw new InvalidOperationException("transient failure after producing");
            }
        });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var run = processor.RunAsync(stop.Token);
        await WaitForOutputsAsync(cluster, output, partitions, 300, run, processor);
        await Task.Delay(500, TestContext.Current.CancellationToken); // room for anything extra to show up
        await stop.CancelAsync();
        await run.WaitAsync(Timeout, TestContext.Current.CancellationToken);

        var committed = Read(cluster, output, partitions, IsolationLevel.ReadCommitted, expected: 300);
        if (cluster.IsMock)
        {
            // librdkafka's mock acknowledges TxnOffsetCommit without storing it, so the second incarnation starts from
            // the beginning and replays what the first one committed as new transactions. On a
            // real broker the offsets commit with the outputs and the count is exactly 300. How much is replayed depends
            // on timing (and the mock's abort handling), so here only the dedup-relevant facts below are exact.
            Assert.True(committed.Count >= 300, $"{committed.Count} committed outputs ({firstCommitted} committed by the first incarnation)");
        }
        else
        {
            Assert.Equal(300, committed.Count);
        }

        // Either way each input's output appears once per stable idempotency key: what a wrapped consumer dedups on.
        Assert.Equal(300, committed.Select(m => Encoding.UTF8.GetString(m.Message.Key)).Distinct().Count());
        Assert.Equal(300, committed.Select(m => Encoding.UTF8.GetString(m.Message.Headers.GetLastBytes(KafkaIdempotencyOptions.DefaultKeyHeader))).Distinct().Count());
        Assert.All(committed.GroupBy(m => Encoding.UTF8.GetString(m.Message.Key)), g => Assert.Single(g.Select(m => Encoding.UTF8.GetString(m.Message.Headers.GetLastBytes(KafkaIdempotencyOptions.DefaultKeyHeader))).Distinct()));
        Assert.Equal(1, failedOnce);
        Assert.True(processor.AbortedTransactions >= 1, "the handler failure must have aborted a transaction");

    }

    [Fact]
    public async Task Message_failing_every_attempt_goes_to_the_dead_letter_topic_in_a_transaction_and_the_rest_flow_on()
    {
        using var cluster = MockKafkaCluster.Start();
        var input = Unique("in");
        var output = Unique("out");
        cluster.CreateTopic(input, 1);
        cluster.CreateTopic(output, 1);
        cluster.CreateTopic(input + ".dlq", 1);
        Produce(cluster, input, Enumerable.Range(0, 20).Select(i => i == 5 ? "poison" : $"order-{i}"));
        var group = Unique("g");
        var poisonRuns = 0;
        using var processor = new KafkaTransactionalProcessor(
            ConsumerConfig(cluster, group),
            new ProducerConfig { BootstrapServers = cluster.BootstrapServers },
            Options(input, Unique("app"), o => o.Retry = new RetryOptions { MaxAttempts = 3, InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(50) }),
            (context, _) =>
            {
                context.Produce(output, new Message<byte[], byte[]> { Key = context.Input.Message.Key, Value = context.Input.Message.Value });
                if (Encoding.UTF8.GetString(context.Input.Message.Key) == "poison")
                {
                    Interlocked.Increment(ref poisonRuns);
                    throw new InvalidOperationException("always fails");
                }

                return ValueTask.CompletedTask;
            });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var run = processor.RunAsync(stop.Token);
        await WaitForOutputsAsync(cluster, output, 1, 19, run, processor);
        await WaitForOutputsAsync(cluster, input + ".dlq", 1, 1, run, processor);
        await WaitUntilAsync(
            () => Task.FromResult(run.IsCompleted || processor.CommittedMessages >= 20),
            Timeout,
            () => Task.FromResult($"{processor.CommittedMessages} of 20 inputs covered by committed transactions"));
        await stop.CancelAsync();
        await run.WaitAsync(Timeout, TestContext.Current.CancellationToken);

        Assert.Equal(3, poisonRuns);
        var outputs = Read(cluster, output, 1, IsolationLevel.ReadCommitted, expected: 19);
        var good = outputs.Where(m => Encoding.UTF8.GetString(m.Message.Key) != "poison").ToList();
        Assert.Equal(19, good.Select(m => Encoding.UTF8.GetString(m.Message.Key)).Distinct().Count());
        Assert.Equal(19, good.Select(m => Encoding.UTF8.GetString(m.Message.Headers.GetLastBytes(KafkaIdempotencyOptions.DefaultKeyHeader))).Distinct().Count());
        if (!cluster.IsMock)
        {
            // librdkafka's mock has no read_committed isolation: outputs of an aborted attempt that had already reached
            // the log stay visible (only what the client still held is purged), so the exact count is a real-broker fact.
            Assert.Equal(19, outputs.Count);
            Assert.DoesNotContain(outputs, m => Encoding.UTF8.GetString(m.Message.Key) == "poison");
        }

        var dead = Assert.Single(Read(cluster, input + ".dlq", 1, IsolationLevel.ReadCommitted, expected: 1));
        Assert.Equal("poison", Encoding.UTF8.GetString(dead.Message.Key));
        Assert.Equal("3", Encoding.UTF8.GetString(dead.Message.Headers.GetLastBytes("x-attempts")));
    }

    [Fact]
    public async Task AddKafkaTransactionalProcessor_runs_in_a_host_with_a_scoped_handler_and_read_committed_readers_see_each_output_once()
    {
        using var cluster = MockKafkaCluster.Start();
        var input = Unique("in");
        var output = Unique("out");
        cluster.CreateTopic(input, 2);
        cluster.CreateTopic(output, 2);
        Produce(cluster, input, Enumerable.Range(0, 40).Select(i => $"order-{i}"));

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(new PricingHandler.Settings(output));
        builder.Services.AddIdempotency().AddKafkaTransactionalProcessor<PricingHandler>(
            ConsumerConfig(cluster, Unique("g")),
            new ProducerConfig { BootstrapServers = cluster.BootstrapServers },
            o =>
            {
                o.Topics.Add(input);
                o.TransactionalId = Unique("pricing-0");
                o.BatchSize = 10;
                o.MaxBatchDelay = TimeSpan.FromMilliseconds(50);
            });
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);
        var seen = 0;
        await WaitUntilAsync(
            () => Task.FromResult((seen = Read(cluster, output, 2, IsolationLevel.ReadCommitted, 40).Count) >= 40),
            Timeout,
            () => Task.FromResult($"{seen} of 40 committed outputs"));
        await host.StopAsync(TestContext.Current.CancellationToken);

        var outputs = Read(cluster, output, 2, IsolationLevel.ReadCommitted, 40);
        Assert.Equal(40, outputs.Count);
        Assert.Equal(40, outputs.Select(m => Encoding.UTF8.GetString(m.Message.Key)).Distinct().Count());
        Assert.All(outputs, m => Assert.Equal("priced:" + Encoding.UTF8.GetString(m.Message.Key), Encoding.UTF8.GetString(m.Message.Value)));
        Assert.Equal(40, outputs.Select(m => Encoding.UTF8.GetString(m.Message.Headers.GetLastBytes(KafkaIdempotencyOptions.DefaultKeyHeader))).Distinct().Count());
        Assert.True(PricingHandler.Instances >= 40, $"a fresh scope (and handler) per input message; {PricingHandler.Instances} handlers were created");
    }

    [Fact]
    public void AddKafkaTransactionalProcessor_refuses_invalid_options_at_registration_naming_the_setting()
    {
        var services = new ServiceCollection();
        var error = Assert.Throws<ArgumentException>(() => services.AddIdempotency().AddKafkaTransactionalProcessor<PricingHandler>(
            new ConsumerConfig(), new ProducerConfig(), o => o.Topics.Add("t")));
        Assert.Contains("TransactionalId", error.Message);
    }

    /// <summary>
    /// Zombie fencing, at the producer level: a second producer with the same transactional id (a restarted instance)
    /// must fence the first (its open transaction aborted, its next commit refused with a fatal error). librdkafka's
    /// mock does not implement this (its InitProducerId hands a fresh producer a new producer id instead of bumping the
    /// epoch of the id registered for that transactional id; EndTxn writes no markers and Fetch reports no aborted
    /// transactions), so on the mock this test pins the gap; with <c>KAFKA_BOOTSTRAP_SERVERS</c> it asserts the fencing.
    /// </summary>
    [Fact]
    public void Second_producer_with_the_same_transactional_id_fences_the_first_on_a_real_broker_the_mock_does_not()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("fence");
        cluster.CreateTopic(topic, 1);
        var transactionalId = Unique("app-0");
        var timeout = TimeSpan.FromSeconds(10);
        IProducer<byte[], byte[]> Producer() => new ProducerBuilder<byte[], byte[]>(new ProducerConfig { BootstrapServers = cluster.BootstrapServers, TransactionalId = transactionalId }).Build();
        Message<byte[], byte[]> Text(string s) => new() { Key = Encoding.UTF8.GetBytes(s), Value = Encoding.UTF8.GetBytes(s) };

        using var old = Producer();
        old.InitTransactions(timeout);
        old.BeginTransaction();
        old.Produce(topic, Text("old-committed"));
        old.CommitTransaction(timeout);
        old.BeginTransaction();
        old.Produce(topic, Text("old-open"));
        old.Flush(timeout); // in the log, transaction still open: the instance "hangs" here

        using var restarted = Producer();
        restarted.InitTransactions(timeout);
        restarted.BeginTransaction();
        restarted.Produce(topic, Text("new-committed"));
        restarted.CommitTransaction(timeout);
        restarted.BeginTransaction();
        restarted.Produce(topic, Text("new-aborted"));
        restarted.Flush(timeout);
        restarted.AbortTransaction(timeout);

        // The zombie wakes up and tries to finish its transaction.
        old.Produce(topic, Text("old-zombie"));
        var zombieCommit = Record.Exception(() => old.CommitTransaction(timeout));
        var visible = Read(cluster, topic, 1, IsolationLevel.ReadCommitted, expected: 2).Select(m => Encoding.UTF8.GetString(m.Message.Key)).ToList();

        if (cluster.IsMock)
        {
            // The gap, as observed with librdkafka 2.16.0's mock: no fencing, and read_committed isolation only for
            // what the client purged before sending. If this fails, the mock learned fencing: assert it as below and
            // update docs/outbox.md.
            Assert.Null(zombieCommit);
            Assert.Equal(["old-committed", "old-open", "new-committed", "new-aborted", "old-zombie"], visible);
        }
        else
        {
            var fenced = Assert.IsType<KafkaException>(zombieCommit, exactMatch: false);
            Assert.True(fenced.Error.IsFatal, $"the zombie's error must be fatal: {fenced.Error}");
            Assert.Contains(fenced.Error.Code, new[] { ErrorCode.ProducerFenced, ErrorCode.InvalidProducerEpoch, ErrorCode.Local_Fenced });
            Assert.Equal(["old-committed", "new-committed"], visible);
        }
    }

    [Fact]
    public void Missing_transactional_id_and_topics_are_rejected_naming_the_settings()
    {
        var error = Assert.Throws<ArgumentException>(() => new KafkaTransactionalProcessor(
            new ConsumerConfig { BootstrapServers = "127.0.0.1:1", GroupId = "g" },
            new ProducerConfig { BootstrapServers = "127.0.0.1:1" },
            new KafkaTransactionalOptions(),
            (_, _) => ValueTask.CompletedTask));
        Assert.Contains("TransactionalId", error.Message);
        Assert.Contains("Topics", error.Message);
    }

    /// <summary>
    /// Waits until a read_committed reader sees <paramref name="expected"/> outputs; a loop that died fails the test with its exception.
    /// (librdkafka's mock cluster acknowledges TxnOffsetCommit but does not store it for OffsetFetch, so committed input
    /// offsets cannot be asserted here; against a real broker, set KAFKA_BOOTSTRAP_SERVERS.)
    /// </summary>
    private static async Task WaitForOutputsAsync(MockKafkaCluster cluster, string topic, int partitions, int expected, Task run, KafkaTransactionalProcessor processor)
    {
        var seen = 0;
        await WaitUntilAsync(
            () => Task.FromResult(run.IsCompleted || (seen = Read(cluster, topic, partitions, IsolationLevel.ReadCommitted, expected).Count) >= expected),
            Timeout,
            () => Task.FromResult($"{seen} of {expected} committed outputs on {topic}; {processor.CommittedTransactions} committed, {processor.AbortedTransactions} aborted transactions"));
        if (run.IsCompleted)
        {
            await run;
            Assert.Fail("the loop stopped by itself");
        }
    }

    private static KafkaTransactionalOptions Options(string topic, string transactionalId, Action<KafkaTransactionalOptions>? configure = null)
    {
        var options = new KafkaTransactionalOptions
        {
            TransactionalId = transactionalId,
            BatchSize = 50,
            MaxBatchDelay = TimeSpan.FromMilliseconds(50),
            Retry = new RetryOptions { MaxAttempts = 5, InitialDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(100) },
        };
        options.Topics.Add(topic);
        configure?.Invoke(options);
        return options;
    }

    private static List<ConsumeResult<byte[], byte[]>> Read(MockKafkaCluster cluster, string topic, int partitions, IsolationLevel isolation, int expected)
    {
        using var consumer = new ConsumerBuilder<byte[], byte[]>(new ConsumerConfig
        {
            BootstrapServers = cluster.BootstrapServers,
            GroupId = Unique("read"),
            AutoOffsetReset = AutoOffsetReset.Earliest,
            IsolationLevel = isolation,
            EnableAutoCommit = false,
            EnablePartitionEof = true,
        }).Build();
        consumer.Assign(Enumerable.Range(0, partitions).Select(p => new TopicPartitionOffset(topic, p, Offset.Beginning)));
        var results = new List<ConsumeResult<byte[], byte[]>>();
        var atEnd = new HashSet<int>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (DateTime.UtcNow < deadline)
        {
            var result = consumer.Consume(TimeSpan.FromMilliseconds(200));
            if (result is null)
            {
                continue;
            }

            if (result.IsPartitionEOF)
            {
                atEnd.Add(result.Partition.Value);
                if (atEnd.Count == partitions)
                {
                    break;
                }

                continue;
            }

            atEnd.Remove(result.Partition.Value);
            results.Add(result);
        }

        return results;
    }

    /// <summary>A DI-registered transactional handler: one output per input, on the topic from a singleton setting.</summary>
    public sealed class PricingHandler : IKafkaTransactionalHandler
    {
        private static int _instances;
        private readonly Settings _settings;

        public PricingHandler(Settings settings)
        {
            _settings = settings;
            Interlocked.Increment(ref _instances);
        }

        public static int Instances => Volatile.Read(ref _instances);

        public ValueTask HandleAsync(KafkaTransactionContext context, CancellationToken cancellationToken)
        {
            var key = Encoding.UTF8.GetString(context.Input.Message.Key);
            context.Produce(_settings.Output, new Message<byte[], byte[]> { Key = context.Input.Message.Key, Value = Encoding.UTF8.GetBytes("priced:" + key) });
            return ValueTask.CompletedTask;
        }

        public sealed record Settings(string Output);
    }
}
