using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Idempotency.Chaos;

/// <summary>
/// A redis-server of the suite's own (stores <c>redis-crash</c> and <c>redis-crash-everysec</c>): its own port and data
/// directory under <c>.services-private/</c> (git-ignored; <c>$CHAOS_PRIVATE_DIR</c> overrides it), append-only file
/// with <c>appendfsync always</c> (docs/redis.md: no committed write lost on a server crash) or <c>everysec</c> (the
/// last second or so of acknowledged writes may be lost). The crash fault SIGKILLs it by PID and starts it again on
/// the same port and directory. Only this process is ever killed.
/// </summary>
internal sealed class PrivateRedis : IAsyncDisposable
{
    private readonly string _dir;
    private Process? _process;

    private readonly string _fsync;

    private PrivateRedis(string dir, int port, string fsync)
    {
        _dir = dir;
        Port = port;
        _fsync = fsync;
    }

    public int Port { get; }

    public int Crashes { get; private set; }

    /// <summary>Gets when each SIGKILL happened (<see cref="Stopwatch.GetTimestamp"/>).</summary>
    public List<long> CrashTimes { get; } = [];

    /// <summary>Starts a private redis-server; <paramref name="fsync"/> is its <c>appendfsync</c> (always or everysec).</summary>
    public static async Task<PrivateRedis> StartAsync(string runId, string fsync = "always")
    {
        var root = Environment.GetEnvironmentVariable("CHAOS_PRIVATE_DIR") is { Length: > 0 } d ? d : Path.Combine(Directory.GetCurrentDirectory(), ".services-private");
        var dir = Path.Combine(root, "redis-" + runId);
        Directory.CreateDirectory(dir);
        var server = new PrivateRedis(dir, PrivateServer.ReservePort(), fsync);
        PrivateServer.Track(server, () => server._process is { HasExited: false } p ? [p.Id] : [], dir);
        await server.LaunchAsync().ConfigureAwait(false);
        return server;
    }

    /// <summary>SIGKILL, a pause, and a restart on the same port and data (the AOF is replayed).</summary>
    public async Task CrashAsync(TimeSpan down, CancellationToken ct)
    {
        lock (CrashTimes)
        {
            CrashTimes.Add(Stopwatch.GetTimestamp());
        }

        _process?.Kill();
        await (_process?.WaitForExitAsync(ct) ?? Task.CompletedTask).ConfigureAwait(false);
        Crashes++;
        await Task.Delay(down, ct).ConfigureAwait(false);
        await LaunchAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        PrivateServer.Untrack(this);
        if (_process is { HasExited: false })
        {
            _process.Kill();
            await _process.WaitForExitAsync().ConfigureAwait(false);
        }

        _process?.Dispose();
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private async Task LaunchAsync()
    {
        var info = new ProcessStartInfo("redis-server") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[]
        {
            "--bind", "127.0.0.1", "--port", Port.ToString(CultureInfo.InvariantCulture), "--dir", _dir, "--daemonize", "no",
            "--appendonly", "yes", "--appendfsync", _fsync, "--save", "", "--logfile", Path.Combine(_dir, "redis.log"),
        })
        {
            info.ArgumentList.Add(a);
        }

        _process?.Dispose();
        _process = Process.Start(info) ?? throw new InvalidOperationException("redis-server did not start");
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"redis-server on port {Port} exited with code {_process.ExitCode}; see {_dir}/redis.log");
            }

            if (await PingAsync().ConfigureAwait(false))
            {
                return;
            }

            await Task.Delay(50).ConfigureAwait(false);
        }

        throw new TimeoutException($"redis-server on port {Port} did not answer PING (loading its AOF?) within 30 s");
    }

    private async Task<bool> PingAsync()
    {
        try
        {
            using var client = new TcpClient();
            await client.ConnectAsync(IPAddress.Loopback, Port).ConfigureAwait(false);
            var stream = client.GetStream();
            await stream.WriteAsync("PING\r\n"u8.ToArray()).ConfigureAwait(false);
            var buffer = new byte[64];
            var n = await stream.ReadAsync(buffer).ConfigureAwait(false);
            return Encoding.ASCII.GetString(buffer, 0, n).StartsWith("+PONG", StringComparison.Ordinal);
        }
        catch (SocketException)
        {
            return false;
        }
        catch (IOException)
        {
            return false;
        }
    }
}
