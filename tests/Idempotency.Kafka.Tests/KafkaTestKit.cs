using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka.Tests;

/// <summary>Producing, consuming and waiting helpers shared by the Kafka scenarios.</summary>
internal static class KafkaTestKit
{
    public static string Unique(string prefix) => prefix + "-" + Guid.NewGuid().ToString("N")[..10];

    /// <summary>Produces messages whose Kafka key and <c>idempotency-key</c> header are both <paramref name="keys"/>[i] (so a re-produced key lands on the same partition).</summary>
    public static void Produce(MockKafkaCluster cluster, string topic, IEnumerable<string> keys, Func<string, string>? body = null) =>
        Produce(cluster, topic, keys.Select(key =>
        {
            var bytes = Encoding.UTF8.GetBytes(key);
            return new Message<byte[]?, byte[]?>
            {
                Key = bytes,
                Value = Encoding.UTF8.GetBytes(body?.Invoke(key) ?? $"{{\"id\":\"{key}\",\"amount\":5}}"),
                Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, bytes } },
            };
        }));

    /// <summary>Produces <paramref name="messages"/> as they are and fails the test unless every one was delivered.</summary>
    public static void Produce(MockKafkaCluster cluster, string topic, IEnumerable<Message<byte[]?, byte[]?>> messages)
    {
        using var producer = cluster.CreateProducer();
        var failures = new ConcurrentQueue<Error>();
        foreach (var message in messages)
        {
            producer.Produce(topic, message, report =>
            {
                if (report.Error.IsError)
                {
                    failures.Enqueue(report.Error);
                }
            });
        }

        var left = producer.Flush(TimeSpan.FromSeconds(30));
        Assert.True(left == 0 && failures.IsEmpty, $"produce failed: {left} left, errors: {string.Join(", ", failures)}");
    }

    /// <summary>A handler that upserts one business row per key and counts how often it was applied, in the store's transaction.</summary>
    public static IIdempotentMessageHandler Credit(string table, Func<MessageContext, bool>? fail = null, Action<MessageContext>? onRun = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            onRun?.Invoke(context);
            if (fail?.Invoke(context) == true)
            {
                throw new InvalidOperationException("poison message " + context.Key);
            }

            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());
        });

    public static ConsumerConfig ConsumerConfig(MockKafkaCluster cluster, string group) => new()
    {
        BootstrapServers = cluster.BootstrapServers,
        GroupId = group,
        AutoOffsetReset = AutoOffsetReset.Earliest,
        SessionTimeoutMs = 6000,
        HeartbeatIntervalMs = 500,
        MaxPollIntervalMs = 20000,
        TopicMetadataRefreshIntervalMs = 1000,
    };

    public static KafkaIdempotencyOptions<byte[], byte[]> Options(string topic, Action<KafkaIdempotencyOptions<byte[], byte[]>>? configure = null)
    {
        var options = new KafkaIdempotencyOptions<byte[], byte[]>
        {
            CommitEveryMessages = 50,
            CommitInterval = TimeSpan.FromMilliseconds(200),
            RevokeTimeout = TimeSpan.FromSeconds(5),
            ShutdownTimeout = TimeSpan.FromSeconds(5),
            PollTimeout = TimeSpan.FromMilliseconds(50),
        };
        options.Topics.Add(topic);
        configure?.Invoke(options);
        return options;
    }

    public static IdempotencyOptions HandlerOptions(string name, int maxAttempts = 3) => new()
    {
        HandlerName = name,
        Retry = new RetryOptions { MaxAttempts = maxAttempts, InitialDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(100) },
        StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(500) },
    };

    public static RunningConsumer Start(MockKafkaCluster cluster, string group, IdempotentProcessor processor, KafkaIdempotencyOptions options, Action<ProcessingResult>? observe = null, ILogger? logger = null)
    {
        var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(ConsumerConfig(cluster, group), processor, options, logger: logger);
        consumer.ResultObserver = observe;
        return new RunningConsumer(consumer);
    }

    public static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, Func<Task<string>> describe)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < deadline)
        {
            if (await condition())
            {
                return;
            }

            await Task.Delay(100);
        }

        Assert.Fail($"Timed out after {timeout.TotalSeconds:0} s: {await describe()}");
    }

    public static Task<long> CountAsync(PostgresFixture db, string table) => db.ScalarAsync<long>($"SELECT count(*) FROM {table}");

    public static async Task<long> AppliedAsync(PostgresFixture db, string table) => await db.ScalarAsync<long?>($"SELECT coalesce(sum(applied), 0) FROM {table}") ?? 0;

    /// <summary>Reads every message of a topic from the beginning (up to its end offsets, within 20 s).</summary>
    public static List<ConsumeResult<byte[], byte[]>> ReadAll(MockKafkaCluster cluster, string topic, int partitions)
    {
        var end = cluster.EndOffsets(topic, partitions).Sum();
        using var consumer = new ConsumerBuilder<byte[], byte[]>(new ConsumerConfig { BootstrapServers = cluster.BootstrapServers, GroupId = Unique("read"), AutoOffsetReset = AutoOffsetReset.Earliest }).Build();
        consumer.Subscribe(topic);
        var results = new List<ConsumeResult<byte[], byte[]>>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (results.Count < end && DateTime.UtcNow < deadline)
        {
            if (consumer.Consume(TimeSpan.FromMilliseconds(200)) is { IsPartitionEOF: false } result)
            {
                results.Add(result);
            }
        }

        consumer.Close();
        return results;
    }

    /// <summary>Waits until the group's committed offsets equal the end offsets of every partition.</summary>
    public static Task WaitForCommittedToEndAsync(MockKafkaCluster cluster, string group, string topic, int partitions, TimeSpan timeout)
    {
        var end = cluster.EndOffsets(topic, partitions);
        long[] last = [];
        return WaitUntilAsync(
            async () => (last = (await cluster.CommittedOffsetsAsync(group, topic, partitions)).Select((o, i) => o < 0 && end[i] == 0 ? 0 : o).ToArray()).SequenceEqual(end),
            timeout,
            () => Task.FromResult($"committed [{string.Join(",", last)}] != end [{string.Join(",", end)}]"));
    }
}

/// <summary>A consumer whose loop runs in the background until <see cref="StopAsync"/>.</summary>
internal sealed class RunningConsumer : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();

    public RunningConsumer(IdempotentKafkaConsumer<byte[], byte[]> consumer)
    {
        Consumer = consumer;
        Loop = consumer.RunAsync(_stop.Token);
    }

    public IdempotentKafkaConsumer<byte[], byte[]> Consumer { get; }

    public Task Loop { get; }

    public async Task StopAsync()
    {
        _stop.Cancel();
        await Loop.WaitAsync(TimeSpan.FromSeconds(30));
    }

    public async ValueTask DisposeAsync()
    {
        if (!_stop.IsCancellationRequested)
        {
            try
            {
                await StopAsync();
            }
            catch (Exception)
            {
                // The test already failed; cleanup must not hide why.
            }
        }

        Consumer.Dispose();
        _stop.Dispose();
    }
}

/// <summary>Remembers every delivery a consumer reports.</summary>
internal sealed class RecordingObserver : IDeliveryObserver
{
    public ConcurrentQueue<DeliveryObservation> Seen { get; } = new();

    public void OnDelivered(DeliveryObservation delivery) => Seen.Enqueue(delivery);
}
