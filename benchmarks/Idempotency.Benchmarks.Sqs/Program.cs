// SQS benchmark: a plain polling worker vs IdempotentSqsWorker (one transaction per message, and one per batch),
// in one run. Each scenario runs in its own child process (so peak working set is its own), after a warm-up, on a
// preloaded queue; the scenarios are interleaved over several rounds and the median round is reported.
//
//   dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Sqs -- [--messages 5000] [--rounds 3] [--pollers 4] [--low-load 200]
//
// --low-load N adds, per round, a low-load run of the plain worker and of ours with default options: one message in
// flight, latency = the business row's commit stamp (CommitClock) - the sender's clock just before SendMessage.
//
// Needs IDEMPOTENCY_SQS (fauxqs URL) and IDEMPOTENCY_POSTGRES. Writes benchmarks/results/sqs-<time>.md and .json.
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Idempotency.Benchmarks.Sqs;

var options = BenchOptions.Parse(args);
if (options.Child is { } scenario)
{
    var result = await Scenarios.RunAsync(scenario, options);
    Console.WriteLine("RESULT " + JsonSerializer.Serialize(result));
    return 0;
}

var self = typeof(BenchOptions).Assembly.Location;
var names = new[] { Scenarios.Plain, Scenarios.OursPerMessage, Scenarios.OursPerMessageAtCommit, Scenarios.OursBatch, Scenarios.OursBatchSet };
var runs = new List<ScenarioResult>();
var lowLoadRuns = new List<ScenarioResult>();
for (var round = 1; round <= options.Rounds; round++)
{
    foreach (var name in names)
    {
        var result = await RunChildAsync(name, options.Messages);
        runs.Add(result with { Round = round });
        Console.Error.WriteLine($"round {round} {name,-13} {result.MessagesPerSecond,8:0} msg/s  p50 {result.P50Ms,6:0.0} ms  p99 {result.P99Ms,6:0.0} ms  peak WS {result.PeakWorkingSetBytes / 1048576.0,6:0.0} MiB  cpu {result.CpuUsPerMessage,5:0} us/msg");
    }

    if (options.LowLoad > 0)
    {
        foreach (var name in Scenarios.LowLoadScenarios)
        {
            var result = await RunChildAsync(name, options.LowLoad);
            lowLoadRuns.Add(result with { Round = round });
            Console.Error.WriteLine($"round {round} {name,-13} low load: p50 {result.P50Ms,6:0.00} ms  p99 {result.P99Ms,6:0.00} ms");
        }
    }
}

Report.Write(options, runs, names, lowLoadRuns);
return 0;

async Task<ScenarioResult> RunChildAsync(string name, int messages)
{
    var info = new ProcessStartInfo("dotnet", [self, "--child", name, "--messages", messages.ToString(CultureInfo.InvariantCulture), "--pollers", options.Pollers.ToString(CultureInfo.InvariantCulture)])
    {
        RedirectStandardOutput = true,
        UseShellExecute = false,
    };
    using var child = Process.Start(info)!;
    var output = await child.StandardOutput.ReadToEndAsync();
    await child.WaitForExitAsync();
    var line = output.Split('\n').LastOrDefault(l => l.StartsWith("RESULT ", StringComparison.Ordinal))
        ?? throw new InvalidOperationException($"{name} failed (exit {child.ExitCode}):\n{output}");
    return JsonSerializer.Deserialize<ScenarioResult>(line["RESULT ".Length..])!;
}

internal sealed record BenchOptions(int Messages, int Rounds, int Pollers, int LowLoad, string? Child)
{
    public static BenchOptions Parse(string[] args)
    {
        int Int(string name, int fallback) => Array.IndexOf(args, name) is var i and >= 0 ? int.Parse(args[i + 1], CultureInfo.InvariantCulture) : fallback;
        var child = Array.IndexOf(args, "--child") is var c and >= 0 ? args[c + 1] : null;
        return new BenchOptions(Int("--messages", 5000), Int("--rounds", 3), Int("--pollers", 4), Int("--low-load", 0), child);
    }
}

internal sealed record ScenarioResult(string Scenario, int Messages, double Seconds, double MessagesPerSecond, double P50Ms, double P99Ms, long PeakWorkingSetBytes, long BusinessRows, double CpuUsPerMessage, int Round = 0, double[]? LatenciesMs = null);
