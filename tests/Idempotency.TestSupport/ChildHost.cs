using System.Collections.Concurrent;
using System.Diagnostics;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// A test host (<c>tests/Idempotency.&lt;Broker&gt;.TestHost</c>) running in a child process, for SIGKILL tests: started
/// with <c>dotnet &lt;its dll&gt;</c>, its stdout lines collected (so a test can wait for the line the host prints at a
/// chosen point), killed with <see cref="Kill"/> (SIGKILL on Linux: no shutdown code runs) or stopped gracefully by
/// closing its stdin.
/// </summary>
public sealed class ChildHost : IDisposable
{
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly string _name;

    private ChildHost(Process process, string name)
    {
        _process = process;
        _name = name;
        _process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                _lines.Enqueue(e.Data);
            }
        };
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                TestContext.Current.SendDiagnosticMessage($"{_name} stderr: {e.Data}");
            }
        };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    /// <summary>Gets the stdout lines so far.</summary>
    public IReadOnlyCollection<string> Lines => _lines;

    /// <summary>Gets a value indicating whether the process has exited.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>
    /// Starts the host project's dll, found next to the test's own output (the test project references the host with
    /// <c>ReferenceOutputAssembly="false"</c>, so it is built alongside).
    /// </summary>
    /// <param name="testProject">The running test project's name, e.g. <c>Idempotency.RabbitMQ.Tests</c>.</param>
    /// <param name="hostProject">The host project's name, e.g. <c>Idempotency.RabbitMQ.TestHost</c>.</param>
    /// <param name="arguments">Command-line arguments after the dll.</param>
    /// <param name="environment">Extra environment variables for the child.</param>
    public static ChildHost Start(string testProject, string hostProject, IEnumerable<string> arguments, IReadOnlyDictionary<string, string>? environment = null)
    {
        var dll = Path.Combine(AppContext.BaseDirectory.Replace(testProject, hostProject, StringComparison.Ordinal), hostProject + ".dll");
        if (!File.Exists(dll))
        {
            throw new FileNotFoundException($"The test host is built with the tests; not found at {dll}", dll);
        }

        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardInput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(dll);
        foreach (var argument in arguments)
        {
            info.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[name] = value;
        }

        return new ChildHost(Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start"), hostProject);
    }

    /// <summary>Waits until the host prints <paramref name="line"/> (exactly); fails with the last lines if it exits or the time runs out.</summary>
    /// <param name="line">The line to wait for.</param>
    /// <param name="timeout">How long to wait.</param>
    public async Task WaitForLineAsync(string line, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!_lines.Contains(line))
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{_name} exited ({_process.ExitCode}) before printing '{line}'; last output: {Tail()}");
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Timed out after {timeout.TotalSeconds:0.#} s waiting for {_name} to print '{line}'; last output: {Tail()}");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>SIGKILL on Linux: no shutdown code runs. Returns once the process is gone.</summary>
    public void Kill()
    {
        _process.Kill(entireProcessTree: true);
        if (!_process.WaitForExit(10_000))
        {
            throw new TimeoutException($"{_name} did not exit after the kill");
        }
    }

    /// <summary>Closes the host's stdin (its signal to stop gracefully) and waits for it to exit.</summary>
    /// <param name="timeout">How long to wait.</param>
    public async Task StopAsync(TimeSpan timeout)
    {
        _process.StandardInput.Close();
        using var cancel = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(cancel.Token);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(10_000);
        }

        _process.Dispose();
    }

    private string Tail() => string.Join(" | ", _lines.TakeLast(5));
}
