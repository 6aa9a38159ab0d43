using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Idempotency.Redis;
using StackExchange.Redis;
using Testcontainers.Redis;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// A Redis server for a test class: <c>IDEMPOTENCY_REDIS</c> (host:port), else a Testcontainers Redis when Docker
/// answers, else a failure saying how to start the services. Stores get a fresh key prefix each, so suites sharing
/// the server never see each other's keys.
/// </summary>
public sealed class RedisFixture : IAsyncLifetime
{
    private RedisContainer? _container;

    /// <summary>Gets the StackExchange.Redis configuration string of the server.</summary>
    public string Configuration { get; private set; } = string.Empty;

    /// <summary>Gets a connection to the server.</summary>
    public ConnectionMultiplexer Connection { get; private set; } = null!;

    /// <inheritdoc/>
    public async ValueTask InitializeAsync()
    {
        var configuration = ServiceEnvironment.Get(ServiceEnvironment.RedisVariable);
        if (configuration is null)
        {
            if (!ServiceEnvironment.DockerAnswers())
            {
                throw ServiceEnvironment.Missing(ServiceEnvironment.RedisVariable, "Redis");
            }

            _container = new RedisBuilder("redis:7").Build();
            await _container.StartAsync();
            configuration = _container.GetConnectionString();
        }

        Configuration = configuration;
        using var log = new StringWriter();
        try
        {
            Connection = await ConnectionMultiplexer.ConnectAsync(Configuration, log);
        }
        catch (RedisConnectionException exception)
        {
            throw new InvalidOperationException($"Could not connect to Redis at {ServiceEnvironment.RedisVariable}={Configuration}. Connection log:\n{log}", exception);
        }
    }

    /// <summary>A fresh key prefix.</summary>
    public static string NewPrefix() => "t" + Guid.NewGuid().ToString("N")[..10];

    /// <summary>Creates options with a fresh prefix, for the caller to adjust.</summary>
    public static RedisIdempotencyStoreOptions NewOptions() => new() { KeyPrefix = NewPrefix() };

    /// <summary>Creates a store with a fresh prefix on this server.</summary>
    public RedisIdempotencyStore CreateStore(Action<RedisIdempotencyStoreOptions>? configure = null)
    {
        var options = NewOptions();
        configure?.Invoke(options);
        return new RedisIdempotencyStore(Connection, options);
    }

    /// <summary>
    /// A <see cref="TcpProxy"/> in front of this server and a connection through it with short timeouts, so an outage
    /// (<c>Stop()</c>) shows at once and the connection comes back after <c>Start()</c>. The real server is never touched.
    /// </summary>
    public async Task<(TcpProxy Proxy, ConnectionMultiplexer Connection)> ConnectThroughProxyAsync()
    {
        var direct = ConfigurationOptions.Parse(Configuration);
        var (host, port) = direct.EndPoints.Single() switch
        {
            DnsEndPoint d => (d.Host, d.Port == 0 ? 6379 : d.Port),
            IPEndPoint i => (i.Address.ToString(), i.Port),
            var other => throw new InvalidOperationException($"unsupported endpoint {other}"),
        };
        var proxy = new TcpProxy(host, port);
        var viaProxy = direct.Clone();
        viaProxy.EndPoints.Clear();
        viaProxy.EndPoints.Add(IPAddress.Loopback, proxy.Port);
        viaProxy.AbortOnConnectFail = false;
        viaProxy.ConnectTimeout = 2_000;
        viaProxy.SyncTimeout = viaProxy.AsyncTimeout = 3_000;
        viaProxy.ConnectRetry = 1;
        return (proxy, await ConnectionMultiplexer.ConnectAsync(viaProxy));
    }

    /// <summary>Deletes every key under a prefix (tests' own cleanup).</summary>
    public async Task DeletePrefixAsync(string prefix)
    {
        foreach (var endpoint in Connection.GetEndPoints())
        {
            var server = Connection.GetServer(endpoint);
            var keys = new List<RedisKey>();
            await foreach (var key in server.KeysAsync(pattern: prefix + ":*", pageSize: 1000))
            {
                keys.Add(key);
            }

            if (keys.Count > 0)
            {
                await Connection.GetDatabase().KeyDeleteAsync([.. keys]);
            }
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (Connection is not null)
        {
            await Connection.DisposeAsync();
        }

        if (_container is not null)
        {
            await _container.DisposeAsync();
        }
    }
}

/// <summary>
/// A private redis-server (found on PATH) on a free loopback port with its own data directory, for tests that kill
/// and restart Redis, or need a password or ACL users of their own; the shared server is never touched. Persistence:
/// append-only file, fsync on every write.
/// </summary>
public sealed class PrivateRedisServer : IAsyncDisposable
{
    private Process? _process;

    private PrivateRedisServer(string directory, int port, string? password)
    {
        Directory = directory;
        Port = port;
        Password = password;
    }

    /// <summary>Gets the data directory.</summary>
    public string Directory { get; }

    /// <summary>Gets the port.</summary>
    public int Port { get; }

    /// <summary>Gets the password of the default user (<c>requirepass</c>), or <see langword="null"/> when there is none.</summary>
    public string? Password { get; }

    /// <summary>Gets the configuration string for StackExchange.Redis (with the password, when there is one).</summary>
    public string Configuration => $"127.0.0.1:{Port},abortConnect=false,connectRetry=5,connectTimeout=2000" + (Password is null ? string.Empty : $",password={Password}");

    /// <summary>Starts a server on a free port in a fresh temporary directory.</summary>
    /// <param name="password">The default user's password (<c>--requirepass</c>), or <see langword="null"/> for none.</param>
    public static async Task<PrivateRedisServer> StartAsync(string? password = null)
    {
        var directory = Path.Combine(Path.GetTempPath(), "idem-redis-" + Guid.NewGuid().ToString("N")[..8]);
        System.IO.Directory.CreateDirectory(directory);
        var server = new PrivateRedisServer(directory, FreePort(), password);
        await server.StartAgainAsync();
        return server;
    }

    /// <summary>Starts the server (again) on the same port and directory, and waits until it answers.</summary>
    public async Task StartAgainAsync()
    {
        var executable = FindOnPath("redis-server")
            ?? throw new InvalidOperationException("redis-server is not on PATH; install it (apt-get install redis-server) or run scripts/services.sh up.");
        var info = new ProcessStartInfo(executable)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in new[] { "--port", Port.ToString(), "--bind", "127.0.0.1", "--dir", Directory, "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no", "--protected-mode", "no" })
        {
            info.ArgumentList.Add(argument);
        }

        if (Password is not null)
        {
            info.ArgumentList.Add("--requirepass");
            info.ArgumentList.Add(Password);
        }

        _process = Process.Start(info) ?? throw new InvalidOperationException("redis-server did not start.");
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (true)
        {
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, Port);
                await using var stream = client.GetStream();
                await stream.WriteAsync("PING\r\n"u8.ToArray());
                var buffer = new byte[64];
                var read = await stream.ReadAsync(buffer);
                // A server with a password answers NOAUTH: it is up all the same.
                var reply = System.Text.Encoding.ASCII.GetString(buffer, 0, read);
                if (reply.StartsWith("+PONG", StringComparison.Ordinal) || reply.StartsWith("-NOAUTH", StringComparison.Ordinal))
                {
                    return;
                }
            }
            catch (SocketException)
            {
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"The private redis-server on port {Port} did not answer PING within 10 s.");
            }

            await Task.Delay(50);
        }
    }

    /// <summary>Kills the server with SIGKILL (no shutdown save), as a crash would, and waits for it to exit.</summary>
    public async Task KillAsync()
    {
        if (_process is { HasExited: false } process)
        {
            process.Kill();
            await process.WaitForExitAsync();
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await KillAsync();
        _process?.Dispose();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty)
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name))
            .FirstOrDefault(File.Exists);
}
