using System.Collections.Concurrent;
using System.Text;
using Confluent.Kafka;
using Idempotency.Health;
using Idempotency.InMemory;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Hosting;
using static Idempotency.Kafka.Tests.KafkaTestKit;

namespace Idempotency.Kafka.Tests;

public sealed class KafkaDependencyInjectionTests
{
    public sealed class CountingHandler : IIdempotentMessageHandler
    {
        public static int Runs;

        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref Runs);
            return ValueTask.CompletedTask;
        }
    }

    [Fact]
    public async Task AddKafkaConsumer_runs_a_hosted_consumer_that_applies_each_key_once_and_commits()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("di");
        cluster.CreateTopic(topic, 2);
        Produce(cluster, topic, ["a", "b", "a", "c"]);
        var group = Unique("g");
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddIdempotency(b => b
            .UseStore(_ => new InMemoryIdempotencyStore())
            .AddKafkaConsumer<CountingHandler, byte[], byte[]>("di-handler", ConsumerConfig(cluster, group), o => o.Topics.Add(topic)));
        services.AddHealthChecks().Add(IdempotencyHealthChecks.StoreCheck()).Add(IdempotencyHealthChecks.ConsumersCheck());
        await using var provider = services.BuildServiceProvider();
        var hosted = provider.GetServices<IHostedService>().OfType<KafkaIdempotentConsumerService<byte[], byte[]>>().Single();

        await hosted.StartAsync(TestContext.Current.CancellationToken);
        await WaitForCommittedToEndAsync(cluster, group, topic, 2, TimeSpan.FromSeconds(30));
        var health = provider.GetRequiredService<HealthCheckService>();
        var running = await health.CheckHealthAsync(r => r.Name == IdempotencyHealthChecks.ConsumersCheckName, TestContext.Current.CancellationToken);
        await hosted.StopAsync(TestContext.Current.CancellationToken);
        var stopped = await health.CheckHealthAsync(r => r.Name == IdempotencyHealthChecks.ConsumersCheckName, TestContext.Current.CancellationToken);

        Assert.Equal(3, CountingHandler.Runs);
        Assert.Equal(HealthStatus.Healthy, running.Status);
        Assert.Equal(HealthStatus.Unhealthy, stopped.Status);
    }

    [Fact]
    public async Task AddKafkaConsumer_refuses_invalid_options_at_host_start_naming_the_setting()
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings());
        builder.Services.AddIdempotency(b => b
            .UseStore(_ => new InMemoryIdempotencyStore())
            .AddKafkaConsumer<CountingHandler, byte[], byte[]>("h", new Confluent.Kafka.ConsumerConfig(), o => { o.Topics.Add("t"); o.CommitEveryMessages = 0; }));
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("CommitEveryMessages", error.Message);
        Assert.Contains("'h'", error.Message);
    }

    [Fact]
    public void AddKafkaConsumer_twice_with_one_name_adds_configuration_not_a_second_consumer_and_refuses_another_handler()
    {
        var services = new ServiceCollection();
        services.AddIdempotency(b => b
            .UseStore(_ => new InMemoryIdempotencyStore())
            .AddKafkaConsumer<CountingHandler, byte[], byte[]>("same", new Confluent.Kafka.ConsumerConfig(), o => o.Topics.Add("t"))
            .AddKafkaConsumer<CountingHandler, byte[], byte[]>("same", new Confluent.Kafka.ConsumerConfig(), o => o.BatchSize = 7));
        using var provider = services.BuildServiceProvider();

        Assert.Single(provider.GetServices<IHostedService>().OfType<KafkaIdempotentConsumerService<byte[], byte[]>>());
        var options = provider.GetRequiredService<Microsoft.Extensions.Options.IOptionsMonitor<KafkaIdempotencyOptions<byte[], byte[]>>>().Get("same");
        Assert.Equal(["t"], options.Topics);
        Assert.Equal(7, options.BatchSize);
        var other = Assert.Throws<InvalidOperationException>(() => services.AddIdempotency(b => b.AddKafkaConsumer<ConfiguredHandler, byte[], byte[]>("same", new Confluent.Kafka.ConsumerConfig(), o => o.Topics.Add("t"))));
        Assert.Contains("same", other.Message);
    }

    public sealed class ConfiguredHandler : IIdempotentMessageHandler
    {
        public static readonly ConcurrentDictionary<string, int> Runs = new();

        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            Runs.AddOrUpdate(context.Key, 1, (_, n) => n + 1);
            if (context.Key.StartsWith("poison", StringComparison.Ordinal))
            {
                throw new InvalidOperationException("poison");
            }

            return ValueTask.CompletedTask;
        }
    }

    /// <summary>
    /// Everything from configuration, as from appsettings.json: the topic, the key header, the dead-letter suffix, batching
    /// off, and the handler's attempts from the <c>Handler</c> child. The consumer reads the keys from the configured
    /// header (duplicates skipped) and dead-letters the poison message after the configured single attempt.
    /// </summary>
    [Fact]
    public async Task Options_bound_from_configuration_drive_the_consumer()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = Unique("cfg");
        cluster.CreateTopic(topic, 2);
        cluster.CreateTopic(topic + ".dead", 1);
        string[] keys = ["c-1", "c-2", "c-1", "poison-1", "c-3", "c-2"];
        using (var producer = cluster.CreateProducer())
        {
            foreach (var key in keys)
            {
                var bytes = Encoding.UTF8.GetBytes(key);
                await producer.ProduceAsync(topic, new Message<byte[]?, byte[]?> { Key = bytes, Value = bytes, Headers = new Headers { { "order-id", bytes } } }, TestContext.Current.CancellationToken);
            }
        }

        var group = Unique("g");
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Idempotency:Consumers:cfg-orders:Topics:0"] = topic,
            ["Idempotency:Consumers:cfg-orders:KeyHeader"] = "order-id",
            ["Idempotency:Consumers:cfg-orders:DeadLetterTopicSuffix"] = ".dead",
            ["Idempotency:Consumers:cfg-orders:BatchSize"] = "1",
            ["Idempotency:Consumers:cfg-orders:Concurrency"] = "2",
            ["Idempotency:Consumers:cfg-orders:CommitInterval"] = "00:00:00.100",
            ["Idempotency:Consumers:cfg-orders:Handler:Retry:MaxAttempts"] = "1",
        }).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddIdempotency(b => b
            .UseStore(_ => new InMemoryIdempotencyStore())
            .AddKafkaConsumer<ConfiguredHandler, byte[], byte[]>("cfg-orders", ConsumerConfig(cluster, group), configuration.GetSection("Idempotency:Consumers:cfg-orders")));
        await using var provider = services.BuildServiceProvider();
        var options = provider.GetRequiredService<Microsoft.Extensions.Options.IOptionsMonitor<KafkaIdempotencyOptions<byte[], byte[]>>>().Get("cfg-orders");
        Assert.Equal((2, 1, "order-id"), (options.Concurrency, options.BatchSize, options.KeyHeader));
        var hosted = provider.GetServices<IHostedService>().OfType<KafkaIdempotentConsumerService<byte[], byte[]>>().Single();

        await hosted.StartAsync(TestContext.Current.CancellationToken);
        await WaitForCommittedToEndAsync(cluster, group, topic, 2, TimeSpan.FromSeconds(60));
        await hosted.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(1, ConfiguredHandler.Runs["c-1"]);
        Assert.Equal(1, ConfiguredHandler.Runs["c-2"]);
        Assert.Equal(1, ConfiguredHandler.Runs["c-3"]);
        Assert.Equal(1, ConfiguredHandler.Runs["poison-1"]);
        Assert.Equal([1L], cluster.EndOffsets(topic + ".dead", 1));
    }
}
