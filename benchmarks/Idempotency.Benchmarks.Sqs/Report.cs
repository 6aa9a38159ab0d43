using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Idempotency.Benchmarks.Sqs;

internal static class Report
{
    public static void Write(BenchOptions options, List<ScenarioResult> runs, string[] names)
    {
        // Per scenario the round with the median throughput; ratios compare those medians.
        var medians = names.ToDictionary(n => n, n =>
        {
            var ordered = runs.Where(r => r.Scenario == n).OrderBy(r => r.MessagesPerSecond).ToList();
            return ordered[ordered.Count / 2];
        });
        var plain = medians[Scenarios.Plain].MessagesPerSecond;
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine(inv, $"## SQS benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
        md.AppendLine();
        md.AppendLine(inv, $"{options.Messages} preloaded messages per run, {options.Pollers} pollers, batches of 10, fauxqs + PostgreSQL 15 on loopback, {options.Rounds} interleaved rounds, median round shown; {Environment.ProcessorCount} cores (shared).");
        md.AppendLine();
        md.AppendLine("| scenario | msgs/s | vs plain | p50 ms | p99 ms | peak working set MiB | business rows |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|");
        foreach (var name in names)
        {
            var r = medians[name];
            md.AppendLine(inv, $"| {Describe(name)} | {r.MessagesPerSecond:0} | {r.MessagesPerSecond / plain:0.00}x | {r.P50Ms:0.0} | {r.P99Ms:0.0} | {r.PeakWorkingSetBytes / 1048576.0:0.0} | {r.BusinessRows} |");
        }

        md.AppendLine();
        md.AppendLine("All rounds (msgs/s): " + string.Join("; ", names.Select(n => $"{n}: " + string.Join(", ", runs.Where(r => r.Scenario == n).Select(r => r.MessagesPerSecond.ToString("0", inv))))));
        var target = 0.85;
        foreach (var name in new[] { Scenarios.OursPerMessage, Scenarios.OursBatch })
        {
            var ratio = medians[name].MessagesPerSecond / plain;
            md.AppendLine();
            md.AppendLine(inv, $"- {name}: {ratio:0.00}x plain, target >= {target:0.00}x: {(ratio >= target ? "met" : "NOT met")}");
        }

        var text = md.ToString();
        Console.WriteLine(text);
        var directory = FindResultsDirectory();
        var stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", inv);
        File.WriteAllText(Path.Combine(directory, $"sqs-{stamp}.md"), text);
        File.WriteAllText(Path.Combine(directory, $"sqs-{stamp}.json"), JsonSerializer.Serialize(new
        {
            options.Messages,
            options.Pollers,
            options.Rounds,
            Median = medians.Values,
            RatioPerMessage = medians[Scenarios.OursPerMessage].MessagesPerSecond / plain,
            RatioBatch = medians[Scenarios.OursBatch].MessagesPerSecond / plain,
            Runs = runs,
        }, new JsonSerializerOptions { WriteIndented = true }));
        Console.Error.WriteLine($"written to {directory}/sqs-{stamp}.md and .json");
    }

    private static string Describe(string name) => name switch
    {
        Scenarios.Plain => "plain worker (own transaction per message, no idempotency)",
        Scenarios.OursPerMessage => "IdempotentSqsWorker, transaction per message",
        Scenarios.OursBatch => "IdempotentSqsWorker, one transaction per batch",
        _ => name,
    };

    private static string FindResultsDirectory()
    {
        var directory = new DirectoryInfo(AppContext.BaseDirectory);
        while (directory is not null && !Directory.Exists(Path.Combine(directory.FullName, "benchmarks", "results")))
        {
            directory = directory.Parent;
        }

        return directory is null ? Directory.GetCurrentDirectory() : Path.Combine(directory.FullName, "benchmarks", "results");
    }
}
