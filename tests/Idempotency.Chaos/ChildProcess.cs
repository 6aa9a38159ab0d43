using System.Collections.Concurrent;
using System.Diagnostics;
using System.Reflection;

namespace Idempotency.Chaos;

/// <summary>A consumer child process: this same executable started with <c>--child</c>. Killed by PID, never by name.</summary>
internal sealed class ChildProcess : IDisposable
{
    private static readonly ConcurrentDictionary<int, Process> Live = new();
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _stderr = new();
    private readonly object _gate = new();
    private readonly List<(string Event, TaskCompletionSource Done)> _waiters = [];
    private int _results;
    private readonly Stopwatch _age = Stopwatch.StartNew();

    /// <summary>Milliseconds from start to the first result, -1 when none yet.</summary>
    public long FirstResultMs = -1;

    private ChildProcess(Process process) => _process = process;

    public int Processed;
    public int Duplicates;
    public int FailedAttempts;
    public int DeadLettered;
    public long Pruned;

    public int Results => Volatile.Read(ref _results);

    /// <summary>Gets the lease-mode journal lines (<c>E key</c>, <c>K key</c>, <c>S key</c>) in the order the child wrote them.</summary>
    public ConcurrentQueue<string> Journal { get; } = new();

    /// <summary>Gets, per key, when its last <c>E key</c> line (the handler applying its effect) arrived (<see cref="Stopwatch.GetTimestamp"/>).</summary>
    public ConcurrentDictionary<string, long> EffectTimes { get; } = new(StringComparer.Ordinal);

    public bool HasExited => _process.HasExited;

    public int Pid => _process.Id;

    public string StderrTail => string.Join(Environment.NewLine, _stderr.TakeLast(20));

    public static ChildProcess Start(IReadOnlyDictionary<string, string> args)
    {
        var info = SelfStartInfo();
        info.ArgumentList.Add("--child");
        foreach (var a in ChildArgs.Format(args))
        {
            info.ArgumentList.Add(a);
        }

        info.RedirectStandardInput = info.RedirectStandardOutput = info.RedirectStandardError = true;
        info.UseShellExecute = false;
        info.Environment["DOTNET_TieredPGO"] = "0";
        info.Environment["DOTNET_TC_QuickJitForLoops"] = "1";
        var process = new Process { StartInfo = info, EnableRaisingEvents = true };
        var child = new ChildProcess(process);
        process.OutputDataReceived += (_, e) => { if (e.Data is { } line) child.OnLine(line); };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { } line)
            {
                child._stderr.Enqueue(line);
                while (child._stderr.Count > 200) child._stderr.TryDequeue(out string? _);
            }
        };
        process.Start();
        Live[process.Id] = process;
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    /// <summary>Kills every child still running (on exit, Ctrl+C, or failure), by PID.</summary>
    public static void KillAll()
    {
        foreach (var (pid, process) in Live)
        {
            try
            {
                if (!process.HasExited)
                {
                    process.Kill(entireProcessTree: true);
                }
            }
            catch (Exception)
            {
            }

            Live.TryRemove(pid, out _);
        }
    }

    public void Send(string line)
    {
        try
        {
            _process.StandardInput.WriteLine(line);
            _process.StandardInput.Flush();
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Waits for an event line ("ready", "H", "C") that arrives after this call.</summary>
    public async Task<bool> WaitForEventAsync(string evt, TimeSpan timeout)
    {
        var tcs = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            _waiters.Add((evt, tcs));
        }

        var won = await Task.WhenAny(tcs.Task, Task.Delay(timeout), _process.WaitForExitAsync()) == tcs.Task;
        lock (_gate)
        {
            _waiters.RemoveAll(w => w.Done == tcs);
        }

        return won;
    }

    /// <summary>Waits until the child reported at least <paramref name="count"/> results in all.</summary>
    public async Task<bool> WaitForResultsAsync(int count, TimeSpan timeout)
    {
        var deadline = Stopwatch.StartNew();
        while (Results < count)
        {
            if (deadline.Elapsed > timeout || _process.HasExited)
            {
                return false;
            }

            await Task.Delay(10);
        }

        return true;
    }

    /// <summary>SIGKILL (Process.Kill on Linux), then waits for the exit.</summary>
    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
        }

        _process.WaitForExit(10_000);
        Live.TryRemove(_process.Id, out _);
    }

    /// <summary>Asks the child to stop gracefully; kills it when it does not within the timeout.</summary>
    public async Task StopAsync(TimeSpan timeout)
    {
        Send("stop");
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Kill();
        }

        Live.TryRemove(_process.Id, out _);
    }

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            Kill();
        }

        _process.Dispose();
    }

    private void OnLine(string line)
    {
        if (line.StartsWith("R ", StringComparison.Ordinal))
        {
            if (Interlocked.Read(ref FirstResultMs) < 0)
            {
                Interlocked.CompareExchange(ref FirstResultMs, _age.ElapsedMilliseconds, -1);
            }

            switch (line[2])
            {
                case 'P': Interlocked.Increment(ref Processed); Interlocked.Increment(ref _results); break;
                case 'D': Interlocked.Increment(ref Duplicates); Interlocked.Increment(ref _results); break;
                case 'F': Interlocked.Increment(ref FailedAttempts); break;
                case 'L': Interlocked.Increment(ref DeadLettered); Interlocked.Increment(ref _results); break;
            }

            return;
        }

        if (line.StartsWith("P ", StringComparison.Ordinal) && long.TryParse(line.AsSpan(2), System.Globalization.CultureInfo.InvariantCulture, out var pruned))
        {
            Interlocked.Add(ref Pruned, pruned);
            return;
        }

        if (line.Length > 2 && line[1] == ' ' && line[0] is 'E' or 'K' or 'S')
        {
            Journal.Enqueue(line);
            if (line[0] == 'E')
            {
                EffectTimes[line[2..]] = Stopwatch.GetTimestamp();
            }

            if (line[0] != 'S')
            {
                return;
            }

            line = "S";
        }

        lock (_gate)
        {
            foreach (var w in _waiters.Where(w => w.Event == line).ToList())
            {
                w.Done.TrySetResult();
            }
        }
    }

    private static ProcessStartInfo SelfStartInfo()
    {
        var dll = Assembly.GetExecutingAssembly().Location;
        var appHost = Path.ChangeExtension(dll, null);
        if (File.Exists(appHost))
        {
            return new ProcessStartInfo(appHost);
        }

        var dotnet = Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";
        var info = new ProcessStartInfo(dotnet);
        info.ArgumentList.Add(dll);
        return info;
    }
}
