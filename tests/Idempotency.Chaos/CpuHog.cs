using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;

namespace Idempotency.Chaos;

/// <summary>
/// <c>--under-load</c>: stress-ng saturating every core for a bounded time while the scenarios run, stopped by its PID
/// at the end (SIGTERM, then SIGKILL of its process tree). stress-ng comes from Debian (<c>apt-get install -y stress-ng</c>);
/// when it is missing and we run as root with apt-get, it is installed, otherwise the run stops with a clear message.
/// </summary>
internal sealed partial class CpuHog : IDisposable
{
    /// <summary>stress-ng runs in chunks of this length, restarted while the run goes on: if the suite dies without
    /// stopping it (SIGKILL), the load ends within a chunk instead of at the bound.</summary>
    private static readonly TimeSpan Chunk = TimeSpan.FromSeconds(60);

    private readonly string _path;
    private readonly Stopwatch _age = Stopwatch.StartNew();
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private readonly object _gate = new();
    private Process? _current;
    private int _starts;
    private int _disposed;
    private int _firstPid;

    private CpuHog(string path, int workers, TimeSpan bound)
    {
        _path = path;
        Workers = workers;
        Bound = bound;
        StartChunk();
        _loop = Task.Run(LoopAsync);
    }

    public int Workers { get; }

    public TimeSpan Bound { get; }

    public int Pid
    {
        get
        {
            lock (_gate)
            {
                return _current?.Id ?? 0;
            }
        }
    }

    public string Description => string.Create(CultureInfo.InvariantCulture, $"stress-ng --cpu {Workers} (bounded to {Bound.TotalSeconds:0} s, in {Chunk.TotalSeconds:0} s chunks; first pid {_firstPid})");

    /// <summary>Gets a line for the report: how long it ran, and whether it ran to the end of the scenarios.</summary>
    public string Summary => string.Create(CultureInfo.InvariantCulture, $"{Description}: {(StillRunning ? "ran" : "STOPPED EARLY after")} {_age.Elapsed.TotalSeconds:0} s, {_starts} chunks");

    public bool StillRunning => !_loop.IsCompleted && _age.Elapsed < Bound;

    public static CpuHog Start(int workers, TimeSpan bound)
    {
        var path = Find() ?? Install() ?? throw new InvalidOperationException(
            "--under-load needs stress-ng, which is not installed and could not be installed here: run `apt-get install -y stress-ng` (Debian/Ubuntu) as root, then retry.");
        return new CpuHog(path, workers, bound);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
        {
            return;
        }

        _stop.Cancel();
        StopCurrent();
        _loop.Wait(TimeSpan.FromSeconds(10));
        _stop.Dispose();
    }

    private void StartChunk()
    {
        var remaining = Bound - _age.Elapsed;
        var seconds = (int)Math.Max(1, Math.Min(Chunk.TotalSeconds, remaining.TotalSeconds));
        var info = new ProcessStartInfo(_path) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--cpu", Workers.ToString(CultureInfo.InvariantCulture), "--timeout", seconds.ToString(CultureInfo.InvariantCulture) + "s" })
        {
            info.ArgumentList.Add(a);
        }

        var process = Process.Start(info) ?? throw new InvalidOperationException("stress-ng did not start");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        lock (_gate)
        {
            _current?.Dispose();
            _current = process;
        }

        if (_starts++ == 0)
        {
            _firstPid = process.Id;
            Thread.Sleep(300);
            if (process.HasExited)
            {
                throw new InvalidOperationException($"stress-ng exited at once with code {process.ExitCode}");
            }
        }
    }

    private async Task LoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Process? current;
            lock (_gate)
            {
                current = _current;
            }

            try
            {
                if (current is not null)
                {
                    await current.WaitForExitAsync(_stop.Token).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
                return;
            }

            if (_stop.IsCancellationRequested || _age.Elapsed >= Bound)
            {
                return;
            }

            StartChunk();
        }
    }

    private void StopCurrent()
    {
        Process? current;
        lock (_gate)
        {
            current = _current;
        }

        try
        {
            if (current is { HasExited: false })
            {
                // SIGTERM lets stress-ng stop its workers; its process tree is SIGKILLed if it does not exit in 5 s.
                _ = Kill(current.Id, 15);
                if (!current.WaitForExit(5000))
                {
                    current.Kill(entireProcessTree: true);
                    current.WaitForExit(5000);
                }
            }
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static string? Find() =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Append("/usr/bin")
            .Select(d => Path.Combine(d, "stress-ng"))
            .FirstOrDefault(File.Exists);

    private static string? Install()
    {
        if (Environment.UserName != "root" || !File.Exists("/usr/bin/apt-get"))
        {
            return null;
        }

        Console.WriteLine("chaos: stress-ng is missing; apt-get install -y stress-ng");
        foreach (var args in new[] { "install -y stress-ng", "update", "install -y stress-ng" })
        {
            using var p = Process.Start(new ProcessStartInfo("/usr/bin/apt-get", args) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true })!;
            _ = p.StandardOutput.ReadToEndAsync();
            _ = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(300_000))
            {
                p.Kill(entireProcessTree: true);
                return null;
            }

            if (Find() is { } found)
            {
                return found;
            }
        }

        return null;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
