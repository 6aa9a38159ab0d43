using Idempotency.Health;
using Idempotency.InMemory;
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
    public void AddKafkaConsumer_refuses_invalid_options_at_registration_naming_the_setting()
    {
        var services = new ServiceCollection();
        var error = Assert.Throws<ArgumentException>(() => services.AddIdempotency(b => b.AddKafkaConsumer<CountingHandler, byte[], byte[]>(
            "h", new Confluent.Kafka.ConsumerConfig(), o => { o.Topics.Add("t"); o.CommitEveryMessages = 0; })));
        Assert.Contains("CommitEveryMessages", error.Message);
    }
}
