using System.Diagnostics;
using System.Text;
using Idempotency.RabbitMQ;
using Idempotency.TestSupport;
using RabbitMQ.Client;

namespace Idempotency.Chaos;

/// <summary>
/// RabbitMQ (the shared server): a quorum queue with its dead-letter exchange and queue, named per run. The child
/// connects through a <see cref="TcpProxy"/>. Faults: the proxy cut and restored (every connection reset), and the
/// child's connection force-closed by the server (<c>rabbitmqctl close_connection</c>, when
/// <c>$IDEMPOTENCY_RABBITMQCTL</c> is set).
/// </summary>
/// <remarks>
/// With <c>crash</c> (brokers <c>rabbitmq-crash</c>, quorum queues, and <c>rabbitmq-crash-classic</c>, durable classic
/// queues with persistent messages): on a <see cref="PrivateRabbitMq"/> node of the suite's own, which the
/// <c>rabbitmq-node-crash</c> fault SIGKILLs and starts again while the consumer runs; the producer re-publishes a
/// chunk whose confirms a crash cut off (re-sends of the same keys, which the store skips).
/// </remarks>
internal sealed class RabbitMqRig(bool crash = false, RabbitMqQueueType queueType = RabbitMqQueueType.Quorum) : BrokerRig
{
    private Uri _uri = crash ? new Uri("amqp://127.0.0.1/") : new(Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQ") is { Length: > 0 } v
        ? v
        : throw new InvalidOperationException("$IDEMPOTENCY_RABBITMQ is not set: run ./build.sh chaos (it starts the services and exports it)."));

    private readonly SemaphoreSlim _connect = new(1, 1);
    private PrivateRabbitMq? _node;
    private TcpProxy? _proxy;
    private IConnection? _connection;
    private RabbitMqQueueTopology? _topology;
    private string _clientName = "";
    private string _runId = "";

    public override string Name => !crash ? "rabbitmq" : queueType == RabbitMqQueueType.Quorum ? "rabbitmq-crash" : "rabbitmq-crash-classic";

    /// <summary>A node restart takes 10-30 s on a busy machine: a kill point may wait for the restarted node.</summary>
    public override TimeSpan KillPointWait => crash ? TimeSpan.FromSeconds(15) : base.KillPointWait;

    private IConnection Connection => _connection ?? throw new InvalidOperationException("not set up");

    public override string Diagnostics => $"the child's broker proxy accepted {_proxy?.AcceptedConnections ?? 0} connections";

    public override IReadOnlyList<FaultKind> Faults
    {
        get
        {
            var faults = new List<FaultKind>
            {
                new("rabbitmq-connection-reset", async (rng, ct) =>
                {
                    _proxy!.Stop();
                    try { await Task.Delay(rng.Next(500, 1500), ct); }
                    finally { _proxy.Start(); }
                }),
            };
            if (_node is not null)
            {
                faults.Add(new("rabbitmq-node-crash", (rng, ct) => _node.CrashAsync(TimeSpan.FromMilliseconds(rng.Next(200, 1500)), ct)));
            }
            else if (Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQCTL") is { Length: > 0 } ctl)
            {
                faults.Add(new("rabbitmq-close-connection", (_, ct) => CloseConnectionAsync(ctl, ct)));
            }

            return faults;
        }
    }

    public override async Task SetupAsync(string runId)
    {
        if (crash)
        {
            _node = await PrivateRabbitMq.StartAsync(runId);
            _uri = _node.Uri;
        }

        _runId = runId;
        _proxy = new TcpProxy(_uri.Host is "localhost" ? "127.0.0.1" : _uri.Host, _uri.Port > 0 ? _uri.Port : 5672);
        _clientName = "chaos-child-" + runId;
        _connection = await ConnectOrchestratorAsync();
        await using var channel = await Connection.CreateChannelAsync();
        _topology = await RabbitMqTopology.DeclareAsync(channel, "chaos-" + runId, queueType);
    }

    public override async Task ProduceAsync(IReadOnlyList<ChaosMessage> messages)
    {
        if (_node is null)
        {
            await PublishAsync(messages);
            return;
        }

        // The private node may be down (crashed) or go down mid-chunk: publish the whole chunk again until every
        // message of one attempt was confirmed. Messages confirmed before the crash are then sent twice: re-sends.
        var clock = Stopwatch.StartNew();
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                await EnsureConnectedAsync();
                await PublishAsync(messages);
                return;
            }
            catch (Exception e) when (clock.Elapsed < TimeSpan.FromMinutes(5))
            {
                Console.Error.WriteLine($"    [{Name}] publish attempt {attempt} failed ({e.GetType().Name}: {e.Message}); publishing the chunk again");
                await Task.Delay(1000);
            }
        }
    }

    /// <summary>
    /// The orchestrator's own connection. On 2 cores at load 70+ the broker's handshake can take longer than the client's
    /// 30 s default (BrokerUnreachableException): the timeouts stretch with the load, and a refused connect is tried
    /// again for up to 5 minutes, so the harness never reports a slow machine as a failed scenario.
    /// </summary>
    private async Task<IConnection> ConnectOrchestratorAsync()
    {
        var clock = Stopwatch.StartNew();
        for (var attempt = 1; ; attempt++)
        {
            var factory = StretchConnectTimeouts(new ConnectionFactory { Uri = _uri, ClientProvidedName = "chaos-orchestrator-" + _runId });
            factory.ContinuationTimeout = TimeSpan.FromSeconds(20 * MachineLoad.Factor());
            try
            {
                return await factory.CreateConnectionAsync();
            }
            catch (global::RabbitMQ.Client.Exceptions.BrokerUnreachableException e) when (clock.Elapsed < TimeSpan.FromMinutes(5))
            {
                Console.Error.WriteLine($"    [{Name}] orchestrator connect attempt {attempt} failed after {clock.Elapsed.TotalSeconds:0} s at load {MachineLoad.Current:0.0} ({e.InnerException?.Message ?? e.Message}); trying again");
                await Task.Delay(TimeSpan.FromSeconds(2));
            }
        }
    }

    /// <summary>The client's connect and handshake timeouts (30 s and 10 s by default) stretched with the machine's load.</summary>
    private static ConnectionFactory StretchConnectTimeouts(ConnectionFactory factory)
    {
        var stretch = MachineLoad.Factor();
        factory.RequestedConnectionTimeout = TimeSpan.FromSeconds(30 * stretch);
        factory.HandshakeContinuationTimeout = TimeSpan.FromSeconds(20 * stretch);
        return factory;
    }

    /// <summary>Reconnects the orchestrator's connection when a node crash closed it (private node only).</summary>
    private async Task EnsureConnectedAsync()
    {
        if (_connection is { IsOpen: true })
        {
            return;
        }

        await _connect.WaitAsync();
        try
        {
            if (_connection is { IsOpen: true })
            {
                return;
            }

            if (_connection is not null)
            {
                try { await _connection.DisposeAsync(); } catch (Exception) { }
            }

            _connection = await ConnectOrchestratorAsync();
        }
        finally
        {
            _connect.Release();
        }
    }

    private async Task PublishAsync(IReadOnlyList<ChaosMessage> messages)
    {
        await using var channel = await Connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var pending = new List<ValueTask>(256);
        foreach (var m in messages)
        {
            var props = new BasicProperties { MessageId = m.Key, Persistent = true };
            pending.Add(channel.BasicPublishAsync(string.Empty, _topology!.Queue, mandatory: true, props, Encoding.UTF8.GetBytes(m.Body)));
            if (pending.Count >= 256)
            {
                foreach (var p in pending) await p;
                pending.Clear();
            }
        }

        foreach (var p in pending) await p;
    }

    public override void AddChildArgs(IDictionary<string, string> args)
    {
        var builder = new UriBuilder(_uri) { Host = "127.0.0.1", Port = _proxy!.Port };
        args["amqp"] = builder.Uri.ToString();
        args["queue"] = _topology!.Queue;
        args["dlx"] = _topology.DeadLetterExchange;
        args["dlrk"] = _topology.DeadLetterRoutingKey;
        args["client"] = _clientName;
    }

    public override void AddDefaultPathChildArgs(IDictionary<string, string> args)
    {
        args["amqp"] = _uri.ToString();
        args["queue"] = _topology!.Queue;
        args["defaults"] = "1";
    }

    public override async Task<IReadOnlyList<string>> ReadDeadLettersAsync()
    {
        // basic.get without ack, then close the channel: every message goes back to the queue (a non-destructive read).
        await EnsureConnectedAsync();
        var keys = new List<string>();
        await using (var channel = await Connection.CreateChannelAsync())
        {
            while (await channel.BasicGetAsync(_topology!.DeadLetterQueue, autoAck: false) is { } got)
            {
                keys.Add(got.BasicProperties.MessageId ?? "");
            }

            await channel.CloseAsync();
        }

        return keys;
    }

    public override async Task<string> SnapshotAsync()
    {
        await EnsureConnectedAsync();
        await using var channel = await Connection.CreateChannelAsync();
        var ok = await channel.QueueDeclarePassiveAsync(_topology!.Queue);
        var unacked = "";
        if (_node is null && Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQCTL") is { Length: > 0 } ctl)
        {
            // Unacknowledged deliveries are only visible to the server's own tools.
            try
            {
                var list = await RunAsync(ctl, ["list_queues", "-q", "--no-table-headers", "name", "messages_unacknowledged"], CancellationToken.None);
                var line = list.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('\t')).FirstOrDefault(p => p.Length >= 2 && p[0].Trim() == _topology.Queue);
                unacked = line is null ? "" : $", {line[1].Trim()} unacked";
            }
            catch (Exception e) when (e is TimeoutException or System.ComponentModel.Win32Exception or InvalidOperationException)
            {
                unacked = $", unacked unknown ({e.Message})";
            }
        }

        var node = _node is null ? "" : $" (private node {_node.NodeName}, {_node.Crashes} crashes)";
        return $"queue {_topology.Queue}{node}: {ok.MessageCount} ready{unacked}, {ok.ConsumerCount} consumers";
    }

    public override async Task<BrokerInspection> InspectAsync(IReadOnlyCollection<string> keys)
    {
        // With the consumer stopped every unacked delivery is back in the queue: read the queue without acking (the
        // channel's close requeues everything), so a key is deliverable exactly when one of its messages is still there.
        var summary = await SnapshotAsync();
        var inQueue = new Dictionary<string, int>(StringComparer.Ordinal);
        var position = 0;
        await using (var channel = await Connection.CreateChannelAsync())
        {
            while (await channel.BasicGetAsync(_topology!.Queue, autoAck: false) is { } got)
            {
                position++;
                inQueue.TryAdd(got.BasicProperties.MessageId ?? "", position);
            }

            await channel.CloseAsync();
        }

        var result = keys.ToDictionary(
            k => k,
            k => inQueue.TryGetValue(k, out var at)
                ? new KeyPosition(true, $"in queue {_topology!.Queue} at position {at} of {position}")
                : new KeyPosition(false, $"acknowledged: not in queue {_topology!.Queue} ({position} messages left)"),
            StringComparer.Ordinal);
        return new BrokerInspection(result, summary);
    }

    public override async Task SimulateLossAsync(ChaosMessage lost, ChaosMessage kept)
    {
        await ProduceAsync([lost, kept]);
        await EnsureConnectedAsync();
        await using var channel = await Connection.CreateChannelAsync();
        var got = await channel.BasicGetAsync(_topology!.Queue, autoAck: false) ?? throw new InvalidOperationException("the queue is empty");
        if (got.BasicProperties.MessageId != lost.Key)
        {
            throw new InvalidOperationException($"expected {lost.Key} first, got {got.BasicProperties.MessageId}");
        }

        await channel.BasicAckAsync(got.DeliveryTag, multiple: false);
        await channel.CloseAsync();
    }

    public override async ValueTask DisposeAsync()
    {
        if (_proxy is not null)
        {
            await _proxy.DisposeAsync();
        }

        if (_connection is not null)
        {
            try
            {
                if (_topology is not null && _node is null)
                {
                    await using var channel = await _connection.CreateChannelAsync();
                    await channel.QueueDeleteAsync(_topology.Queue);
                    await channel.QueueDeleteAsync(_topology.DeadLetterQueue);
                    await channel.ExchangeDeleteAsync(_topology.DeadLetterExchange);
                }
            }
            catch (Exception e)
            {
                Console.Error.WriteLine("chaos: rabbitmq cleanup failed: " + e.Message);
            }

            await _connection.DisposeAsync();
        }

        if (_node is not null)
        {
            await _node.DisposeAsync();
        }

        _connect.Dispose();
    }

    public static async Task RunRabbitChildAsync(ChildArgs args, IdempotentProcessor processor, Action ready, CancellationToken stop)
    {
        var defaults = args.Get("defaults") is not null;
        // The soak: the client's and the adapter's defaults (the queue's own dead-letter exchange, declared with it).
        var factory = defaults ? new ConnectionFactory { Uri = new Uri(args["amqp"]) } : new ConnectionFactory
        {
            Uri = new Uri(args["amqp"]),
            AutomaticRecoveryEnabled = true,
            TopologyRecoveryEnabled = true,
            NetworkRecoveryInterval = TimeSpan.FromMilliseconds(500),
            RequestedHeartbeat = TimeSpan.FromSeconds(5),
            ClientProvidedName = args["client"],
        };
        var options = defaults ? new RabbitMqIdempotencyOptions { Queue = args["queue"] } : new RabbitMqIdempotencyOptions
        {
            Queue = args["queue"],
            DeadLetterExchange = args["dlx"],
            DeadLetterRoutingKey = args["dlrk"],
            Concurrency = 4,
            PrefetchCount = 40,
            ShutdownTimeout = TimeSpan.FromSeconds(5),
        };

        // Start-up tries again, as a supervisor would restart a consumer that could not connect: on a starved machine
        // the broker closes a handshake that outlasts its handshake_timeout (10 s), or a fault closes the new connection
        // before the consumer's channels are open. The client's own timeouts stretch with the load.
        StretchConnectTimeouts(factory);
        IConnection connection;
        IdempotentRabbitMqConsumer consumer;
        for (var attempt = 1; ; attempt++)
        {
            IConnection? opened = null;
            try
            {
                opened = await factory.CreateConnectionAsync(stop).ConfigureAwait(false);
                consumer = await IdempotentRabbitMqConsumer.CreateAsync(opened, processor, options, cancellationToken: stop).ConfigureAwait(false);
                try
                {
                    await consumer.StartAsync(stop).ConfigureAwait(false);
                }
                catch
                {
                    await consumer.DisposeAsync().ConfigureAwait(false);
                    throw;
                }

                connection = opened;
                break;
            }
            catch (Exception e) when (!stop.IsCancellationRequested && e is global::RabbitMQ.Client.Exceptions.BrokerUnreachableException or global::RabbitMQ.Client.Exceptions.AlreadyClosedException or global::RabbitMQ.Client.Exceptions.OperationInterruptedException or IOException or TimeoutException)
            {
                Console.Error.WriteLine($"start-up attempt {attempt} failed at load {MachineLoad.Current:0.0} ({e.GetType().Name}: {e.Message}); trying again");
                if (opened is not null)
                {
                    try { await opened.DisposeAsync().ConfigureAwait(false); } catch (Exception) { }
                }

                await Task.Delay(TimeSpan.FromSeconds(1), stop).ConfigureAwait(false);
            }
        }

        await using var ownedConnection = connection;
        await using var ownedConsumer = consumer;
        ready();
        try
        {
            await Task.Delay(Timeout.Infinite, stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }

        await consumer.StopAsync(CancellationToken.None).ConfigureAwait(false);
    }

    private async Task CloseConnectionAsync(string ctl, CancellationToken ct)
    {
        // The child names its connection; rabbitmqctl finds it by that name and the server closes it. On a starved
        // machine rabbitmqctl (an Erlang VM of its own) may not answer in time: then this fault did not happen.
        string list;
        try
        {
            list = await RunAsync(ctl, ["list_connections", "-q", "--no-table-headers", "name", "user_provided_name"], ct);
        }
        catch (TimeoutException e)
        {
            Console.Error.WriteLine($"    [{Name}] rabbitmq-close-connection skipped: {e.Message}");
            return;
        }

        foreach (var line in list.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var parts = line.Split('\t');
            if (parts.Length >= 2 && parts[1].Trim() == _clientName)
            {
                try
                {
                    await RunAsync(ctl, ["close_connection", parts[0].Trim(), "chaos: forced close"], ct);
                }
                catch (TimeoutException e)
                {
                    Console.Error.WriteLine($"    [{Name}] rabbitmq-close-connection skipped: {e.Message}");
                }
            }
        }
    }

    private static async Task<string> RunAsync(string ctl, string[] arguments, CancellationToken ct)
    {
        var info = new ProcessStartInfo(ctl) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in arguments)
        {
            info.ArgumentList.Add(a);
        }

        using var process = Process.Start(info)!;
        var output = process.StandardOutput.ReadToEndAsync(ct);
        _ = process.StandardError.ReadToEndAsync(ct);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{ctl} {string.Join(' ', arguments)} did not finish in 60 s");
        }

        return await output;
    }
}
