using System.Globalization;

namespace Idempotency.Chaos;

/// <summary>
/// A RabbitMQ node of the suite's own (brokers <c>rabbitmq-crash</c> and <c>rabbitmq-crash-classic</c>): its own node
/// name, AMQP and distribution ports, mnesia, log and PID file in a temp directory (the environment scripts/services.sh
/// gives the shared node, with other values). The <c>rabbitmq-node-crash</c> fault SIGKILLs the node's Erlang VM by the
/// PID in its PID file (no clean shutdown: queues recover from their on-disk state), waits, and starts it again with
/// the same name, ports and data. Only this node is ever killed; the shared epmd is left alone.
/// </summary>
internal sealed class PrivateRabbitMq : IAsyncDisposable
{
    private readonly string _dir;
    private readonly Dictionary<string, string> _env;

    private PrivateRabbitMq(string dir, string runId)
    {
        _dir = dir;
        Port = PrivateServer.ReservePort();
        // The CLI tools take distribution ports at RABBITMQ_DIST_PORT + 10000..10010: below 30000 that stays valid.
        var distPort = PrivateServer.ReservePort();
        NodeName = $"chaos-{runId.Replace('_', '-')}@localhost";
        _env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["RABBITMQ_NODENAME"] = NodeName,
            ["RABBITMQ_NODE_IP_ADDRESS"] = "127.0.0.1",
            ["RABBITMQ_NODE_PORT"] = Port.ToString(CultureInfo.InvariantCulture),
            ["RABBITMQ_DIST_PORT"] = distPort.ToString(CultureInfo.InvariantCulture),
            ["ERL_EPMD_ADDRESS"] = "127.0.0.1",
            ["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}",
            ["RABBITMQ_MNESIA_BASE"] = Path.Combine(dir, "mnesia"),
            ["RABBITMQ_LOG_BASE"] = Path.Combine(dir, "log"),
            ["RABBITMQ_PID_FILE"] = PidFile,
            ["RABBITMQ_ENABLED_PLUGINS_FILE"] = Path.Combine(dir, "enabled_plugins"),
            // rabbitmq's tools live in /usr/sbin, which a non-login PATH may lack.
            ["PATH"] = (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin") + ":/usr/sbin:/sbin",
        };
    }

    public int Port { get; }

    public string NodeName { get; }

    public int Crashes { get; private set; }

    /// <summary>Gets the AMQP URI of the node (guest is allowed from loopback).</summary>
    public Uri Uri => new($"amqp://guest:guest@127.0.0.1:{Port}/");

    private string PidFile => Path.Combine(_dir, "rabbit.pid");

    private string Log => Path.Combine(_dir, "control.log");

    public static async Task<PrivateRabbitMq> StartAsync(string runId)
    {
        var dir = PrivateServer.CreateDirectory("rabbitmq", runId);
        var node = new PrivateRabbitMq(dir, runId);
        PrivateServer.Track(node, () => PrivateServer.ReadPid(node.PidFile) is { } pid ? [pid] : [], dir);
        try
        {
            await File.WriteAllTextAsync(Path.Combine(dir, "enabled_plugins"), "[].\n").ConfigureAwait(false);
            await PrivateServer.RunAsync($"install -d -o rabbitmq -g rabbitmq '{dir}/mnesia' '{dir}/log' && chown rabbitmq:rabbitmq '{dir}' '{dir}/enabled_plugins'", node.Log, null, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            await node.LaunchAsync().ConfigureAwait(false);
        }
        catch
        {
            await node.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        return node;
    }

    /// <summary>SIGKILL of the node's VM, a pause, and a start with the same name and data (queues recover from disk).</summary>
    public async Task CrashAsync(TimeSpan down, CancellationToken ct)
    {
        var pid = PrivateServer.ReadPid(PidFile) ?? throw new InvalidOperationException($"the private RabbitMQ node has no PID in {PidFile}");
        await PrivateServer.SigKillAsync(pid, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        Crashes++;
        await Task.Delay(down, ct).ConfigureAwait(false);
        await LaunchAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        PrivateServer.Untrack(this);
        if (PrivateServer.ReadPid(PidFile) is { } pid)
        {
            await PrivateServer.SigKillAsync(pid, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }

        PrivateServer.DeleteDirectory(_dir);
    }

    private async Task LaunchAsync()
    {
        // As scripts/services.sh: -detached, then `rabbitmqctl wait <pidfile>` (await_startup fails before the node registers).
        File.Delete(PidFile);
        await PrivateServer.RunAsync("rabbitmq-server -detached", Log, _env, TimeSpan.FromMinutes(2)).ConfigureAwait(false);
        await PrivateServer.RunAsync($"rabbitmqctl -q wait --timeout 300 '{PidFile}'", Log, _env, TimeSpan.FromMinutes(6)).ConfigureAwait(false);
    }
}
