using System.Globalization;
using System.Text;
using Idempotency.RabbitMQ;
using Npgsql;
using RabbitMQ.Client;

/// <summary>RabbitMQ: one classic durable queue, persistent messages, IdempotentRabbitMqConsumer in every process.</summary>
internal sealed class RabbitMqUnderTest(string uri, int unique, int concurrency, IConnection connection, IChannel channel) : IBrokerUnderTest
{
    public string Name => "RabbitMQ";

    public int Unique => unique;

    public string Setup => $"one classic durable queue, persistent messages; each process an IdempotentRabbitMqConsumer (HandlerConcurrency {concurrency}, PrefetchCount 100, per message)";

    public string CpuSource => "beam.smp, shared with other users of the broker";

    public static async Task<RabbitMqUnderTest> CreateAsync(string uri, int unique, int concurrency)
    {
        var factory = new ConnectionFactory { Uri = new Uri(uri), ClientProvidedName = "scale-bench" };
        var connection = await factory.CreateConnectionAsync();
        var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        return new RabbitMqUnderTest(uri, unique, concurrency, connection, channel);
    }

    /// <summary>A consumer process: connects, says ready, consumes from go until stop.</summary>
    public static async Task<int> RunConsumerAsync(NpgsqlDataSource dataSource, string schema, string uri, string queue, int concurrency)
    {
        var processor = Workload.CreateProcessor(dataSource, schema);
        var factory = new ConnectionFactory { Uri = new Uri(uri), AutomaticRecoveryEnabled = true, ClientProvidedName = "scale-bench-consumer" };
        await using var connection = await factory.CreateConnectionAsync();
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, processor, new RabbitMqIdempotencyOptions { Queue = queue, HandlerConcurrency = concurrency, PrefetchCount = 100 });
        Console.WriteLine("ready");
        if (Console.ReadLine() != "go")
        {
            return 1;
        }

        await consumer.StartAsync();
        _ = Console.ReadLine(); // "stop"
        await consumer.StopAsync();
        return 0;
    }

    public async Task PrepareAsync(string runId, IReadOnlyList<string> sends)
    {
        var queue = Queue(runId);
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
        var body = Encoding.UTF8.GetBytes(Workload.Body);
        foreach (var chunk in sends.Chunk(500))
        {
            await Task.WhenAll(chunk.Select(k => channel.BasicPublishAsync("", queue, true, new BasicProperties { MessageId = k, DeliveryMode = DeliveryModes.Persistent }, body).AsTask()));
        }
    }

    public IEnumerable<string> ConsumerArguments(string runId) =>
        ["--rabbitmq", uri, "--queue", Queue(runId), "--concurrency", concurrency.ToString(CultureInfo.InvariantCulture)];

    public async Task WaitForConsumersAsync(IReadOnlyList<ChildProcess> consumers)
    {
        foreach (var consumer in consumers)
        {
            await consumer.ReadUntilAsync("ready", TimeSpan.FromMinutes(2));
        }
    }

    public async Task StartAsync(string runId, IReadOnlyList<ChildProcess> consumers)
    {
        foreach (var consumer in consumers)
        {
            await consumer.SendAsync("go");
        }
    }

    public async Task<long> PendingAsync(string runId) => (await channel.QueueDeclarePassiveAsync(Queue(runId))).MessageCount;

    public double CpuSeconds() => ProcCpu.OfName("beam.smp");

    public async Task CleanupAsync(string runId) => await channel.QueueDeleteAsync(Queue(runId));

    public async ValueTask DisposeAsync()
    {
        await channel.DisposeAsync();
        await connection.DisposeAsync();
    }

    private static string Queue(string runId) => "scale-" + runId;
}
