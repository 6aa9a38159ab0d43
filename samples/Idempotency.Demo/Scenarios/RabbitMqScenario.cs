using Idempotency.RabbitMQ;
using RabbitMQ.Client;

namespace Idempotency.Demo.Scenarios;

/// <summary>
/// RabbitMQ (IDEMPOTENCY_RABBITMQ). A crash aborts the consumer's connection (no recovery, no graceful stop): the
/// broker requeues every unacknowledged delivery, including ones whose transaction already committed (their
/// redelivery is a duplicate) and the one frozen mid-handler (rolled back, runs again).
/// </summary>
internal sealed class RabbitMqScenario(string uri) : BrokerScenario
{
    private RabbitMqQueueTopology? _topology;

    public override string Broker => "rabbitmq";

    private ConnectionFactory Factory => new() { Uri = new Uri(uri), AutomaticRecoveryEnabled = false, TopologyRecoveryEnabled = false, ClientProvidedName = "idempotency-demo" };

    protected override async Task ProduceAsync(string name, Workload workload, CancellationToken cancellationToken)
    {
        await using var connection = await Factory.CreateConnectionAsync(cancellationToken);
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), cancellationToken);
        _topology = await RabbitMqTopology.DeclareAsync(channel, name, RabbitMqQueueType.Classic, cancellationToken: cancellationToken);
        foreach (var chunk in workload.Messages.Chunk(200))
        {
            // The adapter's default key source: MessageId. A re-send is a new message with the same MessageId.
            await Task.WhenAll(chunk.Select(m => channel.BasicPublishAsync(string.Empty, name, mandatory: true,
                new BasicProperties { MessageId = m.Key, Persistent = true, ContentType = "application/json" }, m.Body, cancellationToken).AsTask()));
        }
    }

    protected override async Task<IConsumerRun> StartConsumerAsync(string name, IdempotentProcessor processor, CancellationToken cancellationToken)
    {
        var connection = await Factory.CreateConnectionAsync(cancellationToken);
        var options = new RabbitMqIdempotencyOptions { Concurrency = 4, PrefetchCount = 100, ShutdownTimeout = TimeSpan.FromSeconds(2) };
        _topology!.ApplyTo(options);
        var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, processor, options, cancellationToken: cancellationToken);
        await consumer.StartAsync(cancellationToken);
        Current = consumer;
        return new Run(connection, consumer);
    }

    protected override async Task<bool> IsDrainedAsync(string name, CancellationToken cancellationToken)
    {
        await using var connection = await Factory.CreateConnectionAsync(cancellationToken);
        await using var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        var queue = await channel.QueueDeclarePassiveAsync(name, cancellationToken);
        // MessageCount is the ready messages; unacknowledged ones show up as a consumer still holding them (checked below).
        return queue.MessageCount == 0 && Current?.PendingCount == 0;
    }

    protected override async Task CleanupAsync(string name)
    {
        await using var connection = await Factory.CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(name);
        await channel.QueueDeleteAsync(_topology!.DeadLetterQueue);
        await channel.ExchangeDeleteAsync(_topology.DeadLetterExchange);
    }

    private IdempotentRabbitMqConsumer? Current { get; set; }

    private sealed class Run(IConnection connection, IdempotentRabbitMqConsumer consumer) : IConsumerRun
    {
        public async Task CrashAsync() => await connection.AbortAsync();

        public async Task StopAsync() => await consumer.StopAsync();

        public async ValueTask DisposeAsync()
        {
            try
            {
                await consumer.DisposeAsync();
            }
            catch (Exception)
            {
                // After an abort the channels are gone; nothing more to settle.
            }

            await connection.DisposeAsync();
        }
    }
}
