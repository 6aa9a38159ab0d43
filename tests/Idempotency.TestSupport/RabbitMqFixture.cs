using RabbitMQ.Client;
using Testcontainers.RabbitMq;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// A RabbitMQ broker for a test class: <c>IDEMPOTENCY_RABBITMQ</c> (an amqp:// URI), else a Testcontainers RabbitMQ when
/// Docker answers, else a failure saying how to start the services. Queues are named uniquely per test through
/// <see cref="NewQueueName"/> and deleted (with their <c>.dlq</c>/<c>.dlx</c>) when the fixture is disposed.
/// </summary>
public sealed class RabbitMqFixture : IAsyncLifetime
{
    private readonly List<string> _queues = [];
    private RabbitMqContainer? _container;

    /// <summary>Gets the broker URI.</summary>
    public Uri Uri { get; private set; } = null!;

    /// <summary>Gets a connection for the test's own publishing, declaring and inspecting.</summary>
    public IConnection Connection { get; private set; } = null!;

    /// <summary>Gets a channel on <see cref="Connection"/> with publisher confirms on (publishes return once the broker has them).</summary>
    public IChannel Channel { get; private set; } = null!;

    /// <inheritdoc/>
    public async ValueTask InitializeAsync()
    {
        var uri = ServiceEnvironment.Get(ServiceEnvironment.RabbitMqVariable);
        if (uri is null)
        {
            if (!ServiceEnvironment.DockerAnswers())
            {
                throw ServiceEnvironment.Missing(ServiceEnvironment.RabbitMqVariable, "RabbitMQ");
            }

            _container = new RabbitMqBuilder("rabbitmq:3.13-management").Build();
            await _container.StartAsync();
            uri = _container.GetConnectionString();
        }

        Uri = new Uri(uri);
        Connection = await CreateConnectionAsync("test-admin");
        Channel = await Connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
    }

    /// <summary>Returns a unique queue name and remembers it (and its <c>.dlq</c>/<c>.dlx</c>) for deletion.</summary>
    public string NewQueueName(string prefix = "q")
    {
        var name = $"idem.test.{prefix}.{Guid.NewGuid():N}";
        lock (_queues)
        {
            _queues.Add(name);
        }

        return name;
    }

    /// <summary>Opens a connection with automatic recovery on and a short recovery interval; <paramref name="port"/> redirects it (through a <see cref="TcpProxy"/>).</summary>
    public async Task<IConnection> CreateConnectionAsync(string name, int? port = null, ushort consumerDispatchConcurrency = 1)
    {
        var factory = new ConnectionFactory
        {
            Uri = Uri,
            AutomaticRecoveryEnabled = true,
            TopologyRecoveryEnabled = true,
            NetworkRecoveryInterval = TimeSpan.FromMilliseconds(250),
            RequestedHeartbeat = TimeSpan.FromSeconds(5),
            ClientProvidedName = name,
            ConsumerDispatchConcurrency = consumerDispatchConcurrency,
        };
        if (port is { } p)
        {
            factory.HostName = "127.0.0.1";
            factory.Port = p;
        }

        return await factory.CreateConnectionAsync();
    }

    /// <summary>Publishes one persistent message, waiting for the broker's confirm.</summary>
    public async Task PublishAsync(string queue, string? messageId, ReadOnlyMemory<byte> body, IDictionary<string, object?>? headers = null)
    {
        var properties = new BasicProperties { MessageId = messageId, Persistent = true, Headers = headers };
        await Channel.BasicPublishAsync(string.Empty, queue, mandatory: true, properties, body);
    }

    /// <summary>Publishes many messages on one confirm channel, letting confirms overlap.</summary>
    public async Task PublishManyAsync(string queue, IEnumerable<(string? MessageId, byte[] Body)> messages)
    {
        var pending = new List<Task>();
        foreach (var (id, body) in messages)
        {
            pending.Add(Channel.BasicPublishAsync(string.Empty, queue, mandatory: true, new BasicProperties { MessageId = id, Persistent = true }, body).AsTask());
            if (pending.Count >= 500)
            {
                await Task.WhenAll(pending);
                pending.Clear();
            }
        }

        await Task.WhenAll(pending);
    }

    /// <summary>Returns the number of ready (not unacknowledged) messages in a queue.</summary>
    public async Task<uint> ReadyCountAsync(string queue) => (await Channel.QueueDeclarePassiveAsync(queue)).MessageCount;

    /// <summary>Returns the number of consumers subscribed to a queue.</summary>
    public async Task<uint> ConsumerCountAsync(string queue) => (await Channel.QueueDeclarePassiveAsync(queue)).ConsumerCount;

    /// <summary>Takes every ready message off a queue (auto-ack), for inspecting a dead-letter queue.</summary>
    public async Task<List<BasicGetResult>> DrainAsync(string queue)
    {
        var results = new List<BasicGetResult>();
        while (await Channel.BasicGetAsync(queue, autoAck: true) is { } result)
        {
            results.Add(result);
        }

        return results;
    }

    /// <summary>Polls until <paramref name="condition"/> holds, or fails with <paramref name="what"/> after <paramref name="timeout"/>.</summary>
    public static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Timed out after {timeout.TotalSeconds:0.#} s waiting for: {what}");
            }

            await Task.Delay(50);
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (Channel is not null)
        {
            try
            {
                using var cleanup = await Connection.CreateChannelAsync();
                foreach (var queue in _queues)
                {
                    await cleanup.QueueDeleteAsync(queue, ifUnused: false, ifEmpty: false);
                    await cleanup.QueueDeleteAsync(queue + ".dlq", ifUnused: false, ifEmpty: false);
                    await cleanup.ExchangeDeleteAsync(queue + ".dlx", ifUnused: false);
                }
            }
            catch (Exception)
            {
                // Best effort: the queues are throwaway.
            }

            await Channel.DisposeAsync();
            await Connection.DisposeAsync();
        }

        if (_container is not null)
        {
            await _container.DisposeAsync();
        }
    }
}
