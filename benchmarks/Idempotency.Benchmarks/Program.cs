// ./build.sh bench [--full] [--only kafka,rabbitmq,sqs,redis] [--micro | --all] [--timeout-minutes 15]
//
// Runs every broker benchmark (Kafka, RabbitMQ, SQS, Redis) as a `dotnet <dll>` child process with small arguments
// (the long versions with --full), reads the JSON each one writes to benchmarks/results/, normalises everything into
// one model (Summary.cs) and writes benchmarks/results/summary.json, summary.md, summary.png and the generated
// sections of docs/benchmarks.md. The raw ceilings come from the same run: PostgreSQL's from the Kafka benchmark
// (measured here when Kafka is not run), Redis SET NX from the Redis benchmark.
// --report-only re-renders the summary from the results files already there; --micro runs only the BenchmarkDotNet hot-path benchmarks (short job); --all runs both.
using System.Diagnostics;
using System.Globalization;
using Idempotency.Benchmarks;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;
var full = args.Contains("--full");
var micro = args.Contains("--micro") || args.Contains("--all");
var brokers = !args.Contains("--micro") || args.Contains("--all");
var only = Arg("--only")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToHashSet(StringComparer.OrdinalIgnoreCase);
var timeout = TimeSpan.FromMinutes(double.Parse(Arg("--timeout-minutes") ?? (full ? "30" : "8"), CultureInfo.InvariantCulture));

var paths = RepoPaths.Find();
var machine = MachineInfo.Capture();
Console.WriteLine($"bench: {machine.Cores} cores, {machine.MemoryGiB:0.0} GiB, load average at start {machine.LoadAverageStart}; {(full ? "full" : "quick")} arguments; results in {paths.Results}");
var started = DateTime.UtcNow;
var runs = new List<ChildRun>();
var exit = 0;

if (brokers)
{
    var results = paths.Results;
    var children = new (string Name, string Project, string[] Quick, string[] Full)[]
    {
        ("kafka", "Idempotency.Benchmarks.Kafka", ["8000", "100000", "--rounds", "3", "--low-load", "200"], []),
        ("rabbitmq", "Idempotency.Benchmarks.RabbitMQ", ["--messages", "4000", "--rounds", "3", "--low-load", "200"], []),
        ("sqs", "Idempotency.Benchmarks.Sqs", ["--messages", "1500", "--rounds", "3", "--low-load", "500"], ["--messages", "4000", "--rounds", "5", "--low-load", "500"]),
        ("redis", "Idempotency.Benchmarks.Redis", ["--seconds", "2", "--out", results], ["--seconds", "3", "--out", results]),
    };
    foreach (var child in children.Where(c => only is null || only.Contains(c.Name)))
    {
        if (args.Contains("--report-only"))
        {
            // Re-render the summary from the results files already in benchmarks/results (no child runs).
            runs.Add(new ChildRun(child.Name, true, 0, DateTime.MinValue, TimeSpan.Zero, null));
            continue;
        }

        var run = await ChildProcess.RunAsync(child.Name, paths.Dll(child.Project), full ? child.Full : child.Quick, paths.Root, timeout);
        runs.Add(run);
        if (!run.Succeeded)
        {
            exit = 1;
        }
    }

    var summary = Summary.Build(paths, runs, started);
    if (!summary.Rows.Any(r => r.Kind == "ceiling" && r.Source == "kafka" && r.Scenario.Contains("single-row", StringComparison.Ordinal)))
    {
        // The Kafka benchmark did not run (or failed): measure the PostgreSQL ceilings here.
        Console.WriteLine("bench: measuring the PostgreSQL ceilings in the aggregator (no Kafka results from this run)");
        summary.AddOwnCeilings(await PostgresCeilings.MeasureAsync(TimeSpan.FromSeconds(full ? 3 : 2)));
    }

    summary.Resolve();
    machine.LoadAverageEnd = MachineInfo.LoadAverage();
    var report = new SummaryReport(summary, machine, runs, full, DateTime.UtcNow - started);
    report.Write(paths);
    Console.WriteLine();
    Console.WriteLine(report.Table());
}

if (micro)
{
    var run = await ChildProcess.RunAsync("micro", paths.Dll("Idempotency.Benchmarks.Micro"), ["--filter", "*", "--artifacts", Path.Combine(paths.Root, "artifacts", "micro")], paths.Root, TimeSpan.FromMinutes(15));
    runs.Add(run);
    if (run.Succeeded)
    {
        MicroReport.Collect(paths, machine);
    }
    else
    {
        exit = 1;
    }
}

Docs.Update(paths);
machine.LoadAverageEnd ??= MachineInfo.LoadAverage();
Console.WriteLine($"bench: done in {DateTime.UtcNow - started:mm\\:ss}; load average at the end {machine.LoadAverageEnd}; {string.Join(", ", runs.Select(r => $"{r.Name} {(r.Succeeded ? "ok" : "FAILED")} {r.Elapsed.TotalSeconds:0} s"))}");
return exit;

string? Arg(string name)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

internal sealed record RepoPaths(string Root, string Results, string Docs)
{
#if DEBUG
    private const string Configuration = "Debug";
#else
    private const string Configuration = "Release";
#endif

    public static RepoPaths Find()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !(Directory.Exists(Path.Combine(dir.FullName, "benchmarks")) && Directory.Exists(Path.Combine(dir.FullName, "src"))))
        {
            dir = dir.Parent;
        }

        var root = dir?.FullName ?? Directory.GetCurrentDirectory();
        var results = Path.Combine(root, "benchmarks", "results");
        Directory.CreateDirectory(results);
        return new RepoPaths(root, results, Path.Combine(root, "docs", "benchmarks.md"));
    }

    /// <summary>The dll of a benchmark project built next to this one (the ProjectReference builds it).</summary>
    public string Dll(string project) => Path.Combine(Root, "benchmarks", project, "bin", Configuration, "net10.0", project + ".dll");
}

internal sealed record ChildRun(string Name, bool Succeeded, int ExitCode, DateTime StartedUtc, TimeSpan Elapsed, string? Error);

internal static class ChildProcess
{
    public static async Task<ChildRun> RunAsync(string name, string dll, string[] args, string workingDirectory, TimeSpan timeout)
    {
        var startedUtc = DateTime.UtcNow;
        var watch = Stopwatch.StartNew();
        if (!File.Exists(dll))
        {
            Console.WriteLine($"[{name}] {dll} not found: build benchmarks/Idempotency.Benchmarks first (dotnet run builds it)");
            return new ChildRun(name, false, -1, startedUtc, watch.Elapsed, "dll not found");
        }

        Console.WriteLine($"==> [{name}] dotnet {Path.GetRelativePath(workingDirectory, dll)} {string.Join(' ', args)}  (load average {MachineInfo.LoadAverage()})");
        var info = new ProcessStartInfo("dotnet") { WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(dll);
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }

        using var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { Console.WriteLine($"[{name}] {e.Data}"); } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { Console.WriteLine($"[{name}] {e.Data}"); } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Console.WriteLine($"[{name}] killed after the {timeout.TotalMinutes:0} min timeout");
            return new ChildRun(name, false, -1, startedUtc, watch.Elapsed, $"timed out after {timeout.TotalMinutes:0} min");
        }

        process.WaitForExit(); // drain the redirected output
        var ok = process.ExitCode == 0;
        Console.WriteLine($"==> [{name}] exit code {process.ExitCode} after {watch.Elapsed.TotalSeconds:0} s");
        return new ChildRun(name, ok, process.ExitCode, startedUtc, watch.Elapsed, ok ? null : $"exit code {process.ExitCode}");
    }
}

internal sealed class MachineInfo
{
    public int Cores { get; init; }

    public double MemoryGiB { get; init; }

    public string Cpu { get; init; } = "";

    public string Os { get; init; } = "";

    public string Runtime { get; init; } = "";

    public string LoadAverageStart { get; init; } = "";

    public string? LoadAverageEnd { get; set; }

    public static MachineInfo Capture() => new()
    {
        Cores = Environment.ProcessorCount,
        MemoryGiB = ReadMemTotalKiB() / 1024.0 / 1024.0,
        Cpu = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "" : "",
        Os = System.Runtime.InteropServices.RuntimeInformation.OSDescription,
        Runtime = System.Runtime.InteropServices.RuntimeInformation.FrameworkDescription,
        LoadAverageStart = LoadAverage(),
    };

    public static string LoadAverage() => File.Exists("/proc/loadavg") ? string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

    private static long ReadMemTotalKiB()
    {
        var line = File.Exists("/proc/meminfo") ? File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal)) : null;
        return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
    }
}
