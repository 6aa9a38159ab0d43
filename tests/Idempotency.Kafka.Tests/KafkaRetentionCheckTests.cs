using System.Diagnostics;
using Confluent.Kafka;
using Confluent.Kafka.Admin;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Testing;

namespace Idempotency.Kafka.Tests;

public sealed class KafkaRetentionCheckTests
{
    [Fact]
    public void Warns_once_per_topic_whose_retention_ms_outlasts_the_handler_retention()
    {
        var options = new IdempotencyOptions { HandlerName = "retention", Retention = TimeSpan.FromDays(7) };
        var logger = new FakeLogger();
        DescribeConfigsResult Topic(string name, string retentionMs) => new()
        {
            ConfigResource = new ConfigResource { Type = ResourceType.Topic, Name = name },
            Entries = new Dictionary<string, ConfigEntryResult> { ["retention.ms"] = new() { Name = "retention.ms", Value = retentionMs } },
        };

        var warnings = KafkaRetentionCheck.WarnIfTooShort(
            [
                Topic("fortnight", "1209600000"),  // 14 days > 7 days: a late redelivery could run again
                Topic("week", "604800000"),        // exactly the retention: covered
                Topic("day", "86400000"),
                Topic("forever", "-1"),            // unbounded: nothing to compare with, no warning
                new DescribeConfigsResult { ConfigResource = new ConfigResource { Type = ResourceType.Topic, Name = "unknown" }, Entries = [] },
            ],
            options,
            logger);

        Assert.Equal(1, warnings);
        var record = Assert.Single(logger.Collector.GetSnapshot());
        Assert.Equal(LogLevel.Warning, record.Level);
        Assert.Equal(1100, record.Id.Id);
        Assert.Contains("topic fortnight retention.ms=1209600000", record.Message, StringComparison.Ordinal);
        Assert.Contains("'retention'", record.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Against_a_cluster_that_cannot_describe_configs_it_warns_nothing_and_never_throws()
    {
        using var cluster = MockKafkaCluster.Start();
        Assert.SkipUnless(cluster.IsMock, "checks the mock cluster's missing DescribeConfigs; a real cluster answers it");
        var topic = KafkaTestKit.Unique("retention");
        cluster.CreateTopic(topic, 1);
        var logger = new FakeLogger();
        var options = new IdempotencyOptions { HandlerName = "retention", Retention = TimeSpan.FromMinutes(1) };

        // librdkafka's mock cluster names no controller, so DescribeConfigs times out waiting for one (measured here:
        // KafkaException Local_TimedOut "Failed while waiting for controller"). The check is advice: it must not stop a start.
        using (var admin = new AdminClientBuilder(new AdminClientConfig { BootstrapServers = cluster.BootstrapServers }).Build())
        {
            var refused = await Record.ExceptionAsync(() => admin.DescribeConfigsAsync([new ConfigResource { Type = ResourceType.Topic, Name = topic }], new DescribeConfigsOptions { RequestTimeout = TimeSpan.FromSeconds(2) }));
            Assert.Equal(ErrorCode.Local_TimedOut, Assert.IsAssignableFrom<KafkaException>(refused).Error.Code);
        }

        var watch = Stopwatch.StartNew();
        var warnings = await KafkaRetentionCheck.WarnIfRetentionTooShortAsync(new ClientConfig { BootstrapServers = cluster.BootstrapServers }, [topic], options, logger, TestContext.Current.CancellationToken);

        Assert.Equal(0, warnings);
        Assert.Empty(logger.Collector.GetSnapshot());
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(15), $"took {watch.Elapsed}");
    }
}
