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
        // A free port can be taken by another test's server between FreePort and redis-server's bind: that server then
        // exits at once, and a readiness PING would have been answered by the other one. Such a start is tried again
        // on another port.
        for (var attempt = 1; ; attempt++)
        {
            var directory = Path.Combine(Path.GetTempPath(), "idem-redis-" + Guid.NewGuid().ToString("N")[..8]);
            System.IO.Directory.CreateDirectory(directory);
            var server = new PrivateRedisServer(directory, FreePort(), password);
            try
            {
                await server.StartAgainAsync();
                return server;
            }
            catch (RedisServerExitedException) when (attempt < 5)
            {
                await server.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// Starts the server (again) on the same port and directory, and waits until this process says it accepts
    /// connections (not merely until something on the port answers).
    /// </summary>
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

        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                output.Enqueue(line);
                if (line.Contains("Ready to accept connections", StringComparison.Ordinal))
                {
                    ready.TrySetResult();
                }
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                output.Enqueue(line);
            }
        };
        process.Exited += (_, _) => ready.TrySetException(new RedisServerExitedException(Port, string.Join(Environment.NewLine, output.TakeLast(5))));
        if (!process.Start())
        {
            throw new InvalidOperationException("redis-server did not start.");
        }

        _process = process;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            // Generous: a loaded machine (several test projects at once) can take seconds to start a process.
            await ready.Task.WaitAsync(TimeSpan.FromSeconds(60));
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"The private redis-server on port {Port} did not report ready within 60 s: {string.Join(Environment.NewLine, output.TakeLast(5))}");
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

/// <summary>A private redis-server exited while starting (its port taken, say).</summary>
/// <param name="port">The port it was to listen on.</param>
/// <param name="output">Its last lines of output.</param>
public sealed class RedisServerExitedException(int port, string output)
    : InvalidOperationException($"The private redis-server on port {port} exited while starting: {output}");
