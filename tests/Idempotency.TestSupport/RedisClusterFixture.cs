using System.Diagnostics;
using System.Globalization;
using System.Net;
using Idempotency.Redis;
using StackExchange.Redis;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// A real Redis Cluster for a test class (3 masters, 3 replicas on loopback): <c>IDEMPOTENCY_REDIS_CLUSTER</c> (seed
/// nodes, comma-separated), else a failure saying how to start it (<c>scripts/services.sh cluster-up</c>). Failover
/// tests kill a master by its pid file (<c>IDEMPOTENCY_REDIS_CLUSTER_STATE/&lt;port&gt;/redis.pid</c>: only nodes that
/// script started) and bring it back with <c>IDEMPOTENCY_REDIS_CLUSTER_SERVICES cluster-node-start PORT</c>.
/// </summary>
public sealed class RedisClusterFixture : IAsyncLifetime
{
    /// <summary>The variable with the cluster's seed nodes.</summary>
    public const string Variable = "IDEMPOTENCY_REDIS_CLUSTER";

    /// <summary>The variable with the folder holding one folder per node (its pid file).</summary>
    public const string StateVariable = "IDEMPOTENCY_REDIS_CLUSTER_STATE";

    /// <summary>The variable with the services script that started the cluster.</summary>
    public const string ServicesVariable = "IDEMPOTENCY_REDIS_CLUSTER_SERVICES";

    /// <summary>Gets the StackExchange.Redis configuration string (the seed nodes).</summary>
    public string Configuration { get; private set; } = string.Empty;

    /// <summary>Gets a connection to the cluster.</summary>
    public ConnectionMultiplexer Connection { get; private set; } = null!;

    /// <inheritdoc/>
    public async ValueTask InitializeAsync()
    {
        Configuration = ServiceEnvironment.Get(Variable) ?? throw new InvalidOperationException(
            $"{Variable} is not set, so there is no Redis Cluster to test against. Start one on 127.0.0.1:7000-7005 with " +
            "`scripts/services.sh cluster-up` and load its variables with `eval \"$(scripts/services.sh cluster-env)\"` " +
            "(`./build.sh test` does both). See docs/redis.md, \"Redis Cluster\".");
        Connection = await ConnectAsync();
        _admin = await ConnectAsync(admin: true);
        await WaitHealthyAsync(TimeSpan.FromSeconds(30));
    }

    private ConnectionMultiplexer? _admin;

    private ConnectionMultiplexer Admin => _admin ?? throw new InvalidOperationException("The fixture is not initialised.");

    /// <summary>Opens a new connection to the cluster with short timeouts (failover tests see an outage quickly).</summary>
    /// <param name="admin">Whether admin commands (CLUSTER, INFO) are allowed; the stores' connections never need them.</param>
    public async Task<ConnectionMultiplexer> ConnectAsync(bool admin = false)
    {
        var options = ConfigurationOptions.Parse(Configuration);
        options.AllowAdmin = admin;
        options.AbortOnConnectFail = false;
        options.ConnectTimeout = 2_000;
        options.SyncTimeout = options.AsyncTimeout = 3_000;
        using var log = new StringWriter();
        var connection = await ConnectionMultiplexer.ConnectAsync(options, log);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!connection.GetServers().Any(s => s.IsConnected && s.ServerType == ServerType.Cluster))
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"Could not connect to the Redis Cluster at {Variable}={Configuration}. Connection log:\n{log}");
            }

            await Task.Delay(100);
        }

        return connection;
    }

    /// <summary>Creates a store with a fresh prefix on the cluster.</summary>
    public RedisIdempotencyStore CreateStore(Action<RedisIdempotencyStoreOptions>? configure = null, IConnectionMultiplexer? connection = null)
    {
        var options = RedisFixture.NewOptions();
        configure?.Invoke(options);
        return new RedisIdempotencyStore(connection ?? Connection, options);
    }

    /// <summary>The port of the master that serves a key's slot now, read from the cluster itself.</summary>
    public async Task<int> MasterPortOfAsync(RedisKey key)
    {
        var slot = Connection.HashSlot(key);
        foreach (var (port, role, slots) in await NodesAsync())
        {
            if (role == "master" && slots.Any(r => slot >= r.From && slot <= r.To))
            {
                return port;
            }
        }

        throw new InvalidOperationException($"No master serves slot {slot}.");
    }

    /// <summary>SIGKILLs the node on a port, by the pid file of the services script that started it.</summary>
    /// <returns>The pid killed.</returns>
    public int KillNode(int port)
    {
        var pidFile = Path.Combine(StateDirectory, port.ToString(CultureInfo.InvariantCulture), "redis.pid");
        var pid = int.Parse(File.ReadAllText(pidFile).Trim(), CultureInfo.InvariantCulture);
        using var process = Process.GetProcessById(pid);
        if (!process.ProcessName.StartsWith("redis", StringComparison.Ordinal))
        {
            throw new InvalidOperationException($"pid {pid} from {pidFile} is {process.ProcessName}, not a redis-server: not killing it.");
        }

        process.Kill();
        process.WaitForExit(10_000);
        return pid;
    }

    /// <summary>Starts a killed node again (it rejoins as a replica) and waits until every replica is in sync and the cluster is healthy.</summary>
    public async Task RestartNodeAsync(int port)
    {
        var script = ServiceEnvironment.Get(ServicesVariable) ?? throw new InvalidOperationException($"{ServicesVariable} is not set: load `scripts/services.sh cluster-env`.");
        using var process = Process.Start(new ProcessStartInfo(script, ["cluster-node-start", port.ToString(CultureInfo.InvariantCulture)]) { RedirectStandardError = true })!;
        var error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{script} cluster-node-start {port} failed: {error}");
        }

        await WaitHealthyAsync(TimeSpan.FromSeconds(60));
    }

    /// <summary>Waits until the cluster is ok on every master and each of the 3 masters has a connected replica in sync.</summary>
    public async Task WaitHealthyAsync(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        string last = "";
        while (true)
        {
            try
            {
                var nodes = await NodesAsync();
                var masters = nodes.Where(n => n.Role == "master" && n.Slots.Count > 0).ToList();
                var ok = masters.Count == 3;
                foreach (var (port, _, _) in masters)
                {
                    var server = Admin.GetServer(IPAddress.Loopback, port);
                    var info = (string)(await server.ExecuteAsync("INFO", "replication"))!;
                    var cluster = (string)(await server.ExecuteAsync("CLUSTER", "INFO"))!;
                    ok &= cluster.Contains("cluster_state:ok", StringComparison.Ordinal)
                        && info.Contains("connected_slaves:1", StringComparison.Ordinal)
                        && info.Contains("state=online", StringComparison.Ordinal);
                }

                last = string.Join("; ", nodes.Select(n => $"{n.Port} {n.Role} {n.Slots.Count} ranges"));
                if (ok)
                {
                    return;
                }
            }
            catch (RedisException exception)
            {
                last = exception.Message;
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"The Redis Cluster is not healthy after {timeout}: {last}");
            }

            await Task.Delay(200);
        }
    }

    /// <summary>Reads CLUSTER NODES from any connected node: port, role and slot ranges of every node that is not failed.</summary>
    public async Task<List<(int Port, string Role, List<(int From, int To)> Slots)>> NodesAsync()
    {
        var server = Admin.GetServers().First(s => s.IsConnected);
        var text = (string)(await server.ExecuteAsync("CLUSTER", "NODES"))!;
        var nodes = new List<(int, string, List<(int, int)>)>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var fields = line.Split(' ');
            var flags = fields[2];
            if (flags.Contains("fail", StringComparison.Ordinal) || flags.Contains("handshake", StringComparison.Ordinal))
            {
                continue;
            }

            var address = fields[1].Split('@')[0];
            var port = int.Parse(address[(address.LastIndexOf(':') + 1)..], CultureInfo.InvariantCulture);
            var role = flags.Contains("master", StringComparison.Ordinal) ? "master" : "replica";
            var slots = new List<(int, int)>();
            foreach (var range in fields.Skip(8))
            {
                if (range.StartsWith('['))
                {
                    continue; // a slot being migrated
                }

                var parts = range.Split('-');
                var from = int.Parse(parts[0], CultureInfo.InvariantCulture);
                slots.Add((from, parts.Length > 1 ? int.Parse(parts[1], CultureInfo.InvariantCulture) : from));
            }

            nodes.Add((port, role, slots));
        }

        return nodes;
    }

    private static string StateDirectory => ServiceEnvironment.Get(StateVariable)
        ?? throw new InvalidOperationException($"{StateVariable} is not set: load `scripts/services.sh cluster-env`.");

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (Connection is not null)
        {
            await Connection.DisposeAsync();
        }

        if (_admin is not null)
        {
            await _admin.DisposeAsync();
        }
    }
}
