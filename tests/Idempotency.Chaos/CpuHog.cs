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
    private readonly Process _process;
    private readonly Stopwatch _age = Stopwatch.StartNew();

    private CpuHog(Process process, int workers, TimeSpan bound)
    {
        _process = process;
        Workers = workers;
        Bound = bound;
    }

    public int Workers { get; }

    public TimeSpan Bound { get; }

    public int Pid => _process.Id;

    public string Description => string.Create(CultureInfo.InvariantCulture, $"stress-ng --cpu {Workers} (pid {Pid}, bounded to {Bound.TotalSeconds:0} s)");

    public static CpuHog Start(int workers, TimeSpan bound)
    {
        var path = Find() ?? Install() ?? throw new InvalidOperationException(
            "--under-load needs stress-ng, which is not installed and could not be installed here: run `apt-get install -y stress-ng` (Debian/Ubuntu) as root, then retry.");
        var info = new ProcessStartInfo(path) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--cpu", workers.ToString(CultureInfo.InvariantCulture), "--timeout", ((int)bound.TotalSeconds).ToString(CultureInfo.InvariantCulture) + "s", "--metrics-brief" })
        {
            info.ArgumentList.Add(a);
        }

        var process = Process.Start(info) ?? throw new InvalidOperationException("stress-ng did not start");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        Thread.Sleep(300);
        if (process.HasExited)
        {
            throw new InvalidOperationException($"stress-ng exited at once with code {process.ExitCode}");
        }

        return new CpuHog(process, workers, bound);
    }

    /// <summary>Gets a line for the report: how long it ran, and whether it ran to the end of the scenarios.</summary>
    public string Summary => _process.HasExited && _age.Elapsed < Bound
        ? string.Create(CultureInfo.InvariantCulture, $"{Description}: EXITED EARLY after {_age.Elapsed.TotalSeconds:0} s")
        : string.Create(CultureInfo.InvariantCulture, $"{Description}: ran {_age.Elapsed.TotalSeconds:0} s, the whole run");

    public bool StillRunning => !_process.HasExited;

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                // SIGTERM lets stress-ng stop its workers; its process tree is SIGKILLed if it does not exit in 5 s.
                _ = Kill(_process.Id, 15);
                if (!_process.WaitForExit(5000))
                {
                    _process.Kill(entireProcessTree: true);
                    _process.WaitForExit(5000);
                }
            }
        }
        catch (InvalidOperationException)
        {
        }

        _process.Dispose();
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
