using System.Diagnostics;
using System.Globalization;

namespace Idempotency.Benchmarks.RabbitMQ;

/// <summary>
/// The Wolverine peer (benchmarks/Idempotency.Benchmarks.Wolverine) as a child process: started per run, ready once it
/// prints "ready", stopped by closing its standard input. Its own process keeps Wolverine's dependencies out of this one.
/// </summary>
internal sealed class PeerProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _missing = -1;

    private PeerProcess(Process process) => _process = process;

    public static async Task<PeerProcess> StartAsync(string queue, string table, string schema, int prefetch, int concurrency)
    {
        var dll = Dll();
        if (!File.Exists(dll))
        {
            throw new FileNotFoundException($"{dll} not found: build benchmarks/Idempotency.Benchmarks.Wolverine (the benchmark driver builds it)", dll);
        }

        var info = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { dll, "--queue", queue, "--table", table, "--schema", schema, "--prefetch", prefetch.ToString(CultureInfo.InvariantCulture), "--concurrency", concurrency.ToString(CultureInfo.InvariantCulture) })
        {
            info.ArgumentList.Add(a);
        }

        var peer = new PeerProcess(new Process { StartInfo = info });
        peer._process.OutputDataReceived += (_, e) => peer.OnLine(e.Data);
        peer._process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                Console.WriteLine($"    [wolverine] {e.Data}");
            }
        };
        peer._process.Start();
        peer._process.BeginOutputReadLine();
        peer._process.BeginErrorReadLine();
        await Task.WhenAny(peer._ready.Task, peer._process.WaitForExitAsync()).WaitAsync(TimeSpan.FromMinutes(3));
        if (!peer._ready.Task.IsCompleted)
        {
            throw new InvalidOperationException($"the Wolverine peer exited before it was ready (exit code {peer._process.ExitCode})");
        }

        return peer;
    }

    /// <summary>Stops the peer and returns how many of its handlers ran without the inbox transaction.</summary>
    public async Task<int> StopAsync()
    {
        await _process.StandardInput.WriteLineAsync("stop");
        _process.StandardInput.Close();
        await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        _process.WaitForExit();
        return Volatile.Read(ref _missing);
    }

    public ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        _process.Dispose();
        return ValueTask.CompletedTask;
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        if (line == "ready")
        {
            _ready.TrySetResult();
        }
        else if (line.StartsWith("transactions-missing ", StringComparison.Ordinal))
        {
            Volatile.Write(ref _missing, int.Parse(line["transactions-missing ".Length..], CultureInfo.InvariantCulture));
        }
        else
        {
            Console.WriteLine($"    [wolverine] {line}");
        }
    }

    private static string Dll()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !Directory.Exists(Path.Combine(dir.FullName, "benchmarks", "Idempotency.Benchmarks.Wolverine")))
        {
            dir = dir.Parent;
        }

        var configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent?.Name ?? "Release"; // bin/<Configuration>/net10.0/
        return Path.Combine(dir?.FullName ?? ".", "benchmarks", "Idempotency.Benchmarks.Wolverine", "bin", configuration, "net10.0", "Idempotency.Benchmarks.Wolverine.dll");
    }
}
