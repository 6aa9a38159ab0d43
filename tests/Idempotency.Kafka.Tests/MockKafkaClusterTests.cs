using System.Text;
using Confluent.Kafka;

namespace Idempotency.Kafka.Tests;

public sealed class MockKafkaClusterTests
{
    [Fact]
    public async Task Real_client_produces_and_a_group_consumes_and_commits_on_the_mock_cluster()
    {
        using var cluster = MockKafkaCluster.Start();
        var topic = "smoke-" + Guid.NewGuid().ToString("N")[..8];
        cluster.CreateTopic(topic, 3);
        using (var producer = cluster.CreateProducer())
        {
            for (var i = 0; i < 30; i++)
            {
                await producer.ProduceAsync(topic, new Message<byte[]?, byte[]?> { Key = Encoding.UTF8.GetBytes($"k{i}"), Value = Encoding.UTF8.GetBytes($"v{i}") }, TestContext.Current.CancellationToken);
            }
        }

        var group = "g-" + Guid.NewGuid().ToString("N")[..8];
        using var consumer = new ConsumerBuilder<string, string>(new ConsumerConfig
        {
            BootstrapServers = cluster.BootstrapServers, GroupId = group, AutoOffsetReset = AutoOffsetReset.Earliest, EnableAutoCommit = false,
        }).Build();
        consumer.Subscribe(topic);
        var seen = new HashSet<string>();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (seen.Count < 30 && DateTime.UtcNow < deadline)
        {
            var cr = consumer.Consume(TimeSpan.FromMilliseconds(200));
            if (cr is not null)
            {
                seen.Add(cr.Message.Value);
            }
        }

        Assert.Equal(30, seen.Count);
        consumer.Commit();
        var committed = await cluster.CommittedOffsetsAsync(group, topic, 3);
        Assert.Equal(cluster.EndOffsets(topic, 3), committed);
        Assert.Equal(30, committed.Sum());
        consumer.Close();
    }
}
