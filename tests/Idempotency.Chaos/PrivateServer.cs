using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Idempotency.Chaos;

/// <summary>
/// What the suite's private servers (<see cref="PrivatePostgres"/>, <see cref="PrivateRedis"/>,
/// <see cref="PrivateRabbitMq"/>) share: a port of their own, a data directory of their own, commands run with their
/// output in a log file, and SIGKILL by PID. The shared servers (5432, 6379, 5672, 4566) are never touched.
/// </summary>
internal static class PrivateServer
{
    private static readonly ConcurrentDictionary<int, byte> Reserved = new();
    private static readonly ConcurrentDictionary<object, (Func<IEnumerable<int>> Pids, string Dir)> Live = new();

    /// <summary>Registers a running private server, so an aborted run (Ctrl+C, SIGTERM) still kills it by PID.</summary>
    public static void Track(object server, Func<IEnumerable<int>> pids, string dir) => Live[server] = (pids, dir);

    public static void Untrack(object server) => Live.TryRemove(server, out _);

    /// <summary>SIGKILLs every private server still registered (on exit, Ctrl+C, SIGTERM) and removes its directory.</summary>
    public static void KillAll()
    {
        foreach (var (server, (pids, dir)) in Live)
        {
            try
            {
                foreach (var pid in pids().ToList())
                {
                    try
                    {
                        using var process = Process.GetProcessById(pid);
                        process.Kill();
                    }
                    catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
                    {
                    }
                }

                DeleteDirectory(dir);
            }
            catch (Exception e)
            {
                Console.Error.WriteLine($"chaos: could not stop a private server in {dir}: {e.Message}");
            }

            Live.TryRemove(server, out _);
        }
    }

    /// <summary>
    /// A free loopback port below the kernel's ephemeral range (32768-60999 here): a crashed server restarts on the
    /// same port, and a port in the ephemeral range may meanwhile be taken by any client socket on the machine.
    /// </summary>
    public static int ReservePort()
    {
        for (var attempt = 0; attempt < 500; attempt++)
        {
            var port = Random.Shared.Next(20000, 30000);
            if (!Reserved.TryAdd(port, 0))
            {
                continue;
            }

            try
            {
                using var listener = new TcpListener(IPAddress.Loopback, port);
                listener.Start();
                listener.Stop();
                return port;
            }
            catch (SocketException)
            {
            }
        }

        throw new InvalidOperationException("no free port in 20000-29999 on 127.0.0.1");
    }

    /// <summary>A directory of its own under the system temp folder, enterable by the servers' users (postgres, rabbitmq).</summary>
    public static string CreateDirectory(string kind, string runId)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"chaos-{kind}-{runId}");
        Directory.CreateDirectory(dir);
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        }

        return dir;
    }

    /// <summary>
    /// Runs a shell command with its output appended to <paramref name="log"/> and stdin from /dev/null (daemons it
    /// starts keep no pipe of ours open); fails with the log's tail when it exits non-zero or outlives the timeout.
    /// </summary>
    public static async Task RunAsync(string command, string log, IReadOnlyDictionary<string, string>? environment, TimeSpan timeout)
    {
        var info = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, WorkingDirectory = "/" };
        info.ArgumentList.Add("-c");
        info.ArgumentList.Add($"{command} </dev/null >>'{log}' 2>&1");
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[name] = value;
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException($"could not run {command}");
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"`{command}` did not finish within {timeout.TotalSeconds:0} s; see {log}:{Environment.NewLine}{Tail(log)}");
        }

        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"`{command}` exited with code {process.ExitCode}; see {log}:{Environment.NewLine}{Tail(log)}");
        }
    }

    /// <summary>SIGKILLs <paramref name="pid"/> and waits until it is gone (it may be another user's process: we are root).</summary>
    public static async Task SigKillAsync(int pid, TimeSpan timeout)
    {
        try
        {
            using var process = Process.GetProcessById(pid);
            process.Kill();
        }
        catch (ArgumentException)
        {
            return;
        }
        catch (InvalidOperationException)
        {
            return;
        }

        var clock = Stopwatch.StartNew();
        while (IsAlive(pid))
        {
            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"process {pid} still runs {timeout.TotalSeconds:0} s after SIGKILL");
            }

            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    /// <summary>Whether a process runs (a zombie, killed and not yet reaped by its parent, does not).</summary>
    public static bool IsAlive(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[0];
            return state != "Z" && state != "X";
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Freezes a process (SIGSTOP): a stopped PostgreSQL postmaster can start no backend while it is killed.</summary>
    public static void Stop(int pid) => _ = kill(pid, 19);

    /// <summary>The PIDs whose working directory is <paramref name="dir"/> (every PostgreSQL backend runs in its data directory).</summary>
    public static List<int> ProcessesIn(string dir)
    {
        var found = new List<int>();
        foreach (var proc in Directory.EnumerateDirectories("/proc"))
        {
            if (int.TryParse(Path.GetFileName(proc), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                try
                {
                    if (new DirectoryInfo(Path.Combine(proc, "cwd")).LinkTarget is { } cwd && cwd.TrimEnd('/') == dir.TrimEnd('/') && IsAlive(pid))
                    {
                        found.Add(pid);
                    }
                }
                catch (IOException)
                {
                }
                catch (UnauthorizedAccessException)
                {
                }
            }
        }

        return found;
    }

#pragma warning disable SYSLIB1054, CA5392 // A plain libc kill(2): the one signal .NET has no API for.
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);
#pragma warning restore SYSLIB1054, CA5392

    /// <summary>The PIDs whose parent is <paramref name="pid"/> (a PostgreSQL postmaster's backends and workers).</summary>
    public static List<int> ChildrenOf(int pid)
    {
        var children = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var candidate))
            {
                continue;
            }

            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                if (int.Parse(fields[1], CultureInfo.InvariantCulture) == pid)
                {
                    children.Add(candidate);
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return children;
    }

    /// <summary>The first line of a PID file as a number, or null when the file is missing or not yet written.</summary>
    public static int? ReadPid(string pidFile)
    {
        try
        {
            var first = File.ReadLines(pidFile).FirstOrDefault();
            return int.TryParse(first?.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid) ? pid : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    public static void DeleteDirectory(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static string Tail(string log)
    {
        try
        {
            return string.Join(Environment.NewLine, File.ReadLines(log).TakeLast(15));
        }
        catch (IOException)
        {
            return "(no log)";
        }
    }
}
