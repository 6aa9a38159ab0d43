using System.Diagnostics;
using System.Text;
using System.Threading.Channels;

/// <summary>
/// A process of this benchmark started with a scenario of its own (a consumer, or the Kafka mock cluster's host),
/// driven by lines on its stdin and answering with lines on its stdout; its stderr is kept for error messages.
/// </summary>
internal sealed class ChildProcess : IDisposable
{
    private readonly Process _process;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
    private readonly StringBuilder _errors = new();

    private ChildProcess(Process process)
    {
        _process = process;
    }

    /// <summary>Gets the process id.</summary>
    public int Id => _process.Id;

    /// <summary>Gets the CPU seconds the process has used so far.</summary>
    public double CpuSeconds => ProcCpu.Of(_process.Id);

    /// <summary>Starts this benchmark's executable with the given arguments.</summary>
    public static ChildProcess Start(IEnumerable<string> args)
    {
        var path = Environment.ProcessPath!;
        var info = Path.GetFileNameWithoutExtension(path) == "dotnet"
            ? new ProcessStartInfo(path, [Path.Combine(AppContext.BaseDirectory, "Idempotency.Benchmarks.Scale.dll"), .. args])
            : new ProcessStartInfo(path, args);
        info.RedirectStandardInput = info.RedirectStandardOutput = info.RedirectStandardError = true;
        info.UseShellExecute = false;
        var process = Process.Start(info) ?? throw new InvalidOperationException("could not start a child process");
        var child = new ChildProcess(process);
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                child._lines.Writer.TryComplete();
            }
            else
            {
                child._lines.Writer.TryWrite(e.Data);
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            lock (child._errors)
            {
                if (e.Data is not null && child._errors.Length < 20_000)
                {
                    child._errors.AppendLine(e.Data);
                }
            }
        };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    /// <summary>Reads the next stdout line; fails with the child's stderr when it exited or said nothing in time.</summary>
    public async Task<string> ReadLineAsync(TimeSpan timeout)
    {
        try
        {
            return await _lines.Reader.ReadAsync().AsTask().WaitAsync(timeout);
        }
        catch (Exception e) when (e is ChannelClosedException or TimeoutException)
        {
            throw new InvalidOperationException($"child {Id} {(e is TimeoutException ? "said nothing for " + timeout : "exited")}: {Errors()}", e);
        }
    }

    /// <summary>Reads stdout lines until one starts with <paramref name="prefix"/>, and returns it.</summary>
    public async Task<string> ReadUntilAsync(string prefix, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var line = await ReadLineAsync(deadline - DateTime.UtcNow is { Ticks: > 0 } left ? left : TimeSpan.Zero);
            if (line.StartsWith(prefix, StringComparison.Ordinal))
            {
                return line;
            }
        }
    }

    /// <summary>Tries to read a line already written, without waiting.</summary>
    public bool TryReadLine(out string line) => _lines.Reader.TryRead(out line!);

    /// <summary>Writes one line to the child's stdin.</summary>
    public async Task SendAsync(string line)
    {
        await _process.StandardInput.WriteLineAsync(line);
        await _process.StandardInput.FlushAsync();
    }

    /// <summary>Sends <c>stop</c> and waits for the process to exit (killed after a minute).</summary>
    public async Task StopAsync()
    {
        if (!_process.HasExited)
        {
            await SendAsync("stop");
        }

        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(1));
        try
        {
            await _process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
            throw new InvalidOperationException($"child {Id} did not stop within a minute: {Errors()}");
        }

        if (_process.ExitCode != 0)
        {
            throw new InvalidOperationException($"child {Id} exited with {_process.ExitCode}: {Errors()}");
        }
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        _process.Dispose();
    }

    private string Errors()
    {
        lock (_errors)
        {
            return _errors.ToString();
        }
    }
}
