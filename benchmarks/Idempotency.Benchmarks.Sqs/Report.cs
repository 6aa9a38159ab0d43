using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Idempotency.Benchmarks.Sqs;

internal static class Report
{
    public static void Write(BenchOptions options, List<ScenarioResult> runs, string[] names, List<ScenarioResult> lowLoadRuns)
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
        md.AppendLine("| scenario | msgs/s | vs plain | p50 ms | p99 ms | peak working set MiB | worker CPU us/msg | business rows |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var name in names)
        {
            var r = medians[name];
            md.AppendLine(inv, $"| {Describe(name)} | {r.MessagesPerSecond:0} | {r.MessagesPerSecond / plain:0.00}x | {r.P50Ms:0.0} | {r.P99Ms:0.0} | {r.PeakWorkingSetBytes / 1048576.0:0.0} | {r.CpuUsPerMessage:0} | {r.BusinessRows} |");
        }

        md.AppendLine();
        md.AppendLine("All rounds (msgs/s): " + string.Join("; ", names.Select(n => $"{n}: " + string.Join(", ", runs.Where(r => r.Scenario == n).Select(r => r.MessagesPerSecond.ToString("0", inv))))));
        const double target = 0.85;
        md.AppendLine();
        md.AppendLine("Ratio to plain, from the medians and as the median of the per-round ratios (each round runs the scenarios back to back, so a round's ratio sees the same machine load):");
        md.AppendLine();
        foreach (var name in names.Skip(1))
        {
            var ratio = medians[name].MessagesPerSecond / plain;
            var paired = PairedRatio(runs, name);
            md.AppendLine(inv, $"- {name}: {ratio:0.000}x (paired {paired:0.000}x); target >= {target:0.00}x: {(Math.Min(ratio, paired) >= target ? "met" : ratio >= target || paired >= target ? "borderline" : "NOT met")}");
        }

        // Low load: every round's samples pooled, then p50/p99 of them all (plain first, then the default).
        var lowLoad = Scenarios.LowLoadScenarios
            .Where(n => lowLoadRuns.Any(r => r.Scenario == n))
            .Select(n =>
            {
                var rounds = lowLoadRuns.Where(r => r.Scenario == n).ToList();
                var samples = rounds.SelectMany(r => r.LatenciesMs ?? []).Order().ToArray();
                return new LowLoadRow(n, DescribeLowLoad(n), Percentile(samples, 0.50), Percentile(samples, 0.99), samples.Length, string.Join(" / ", rounds.Select(r => r.P99Ms.ToString("0.0", inv))));
            })
            .ToList();
        if (lowLoad.Count == 2)
        {
            md.AppendLine();
            md.AppendLine(inv, $"Low load: one message in flight ({options.LowLoad} per scenario per round, all rounds pooled, each after warm-up traffic in its fresh process until the JIT compiled nothing for a second); latency = the business row's commit stamp (a deferred trigger's `clock_timestamp()` at COMMIT) - the sender's clock just before `SendMessage`; the next message is sent when PostgreSQL's NOTIFY (sent at commit) arrives.");
            md.AppendLine();
            md.AppendLine("| scenario | p50 ms | p99 ms | samples | p99 per round ms |");
            md.AppendLine("|---|---:|---:|---:|---|");
            foreach (var row in lowLoad)
            {
                md.AppendLine(inv, $"| {row.Name} | {row.P50Ms:0.00} | {row.P99Ms:0.00} | {row.Samples} | {row.Rounds} |");
            }

            var difference = lowLoad[1].P99Ms - lowLoad[0].P99Ms;
            md.AppendLine();
            md.AppendLine(inv, $"- low load: default p99 - plain p99 = {difference:+0.00;-0.00} ms; target <= +2 ms: {(difference <= 2 ? "met" : "NOT met")}");
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
            PairedRatios = names.Skip(1).ToDictionary(n => n, n => PairedRatio(runs, n)),
            RatioPerMessage = medians[Scenarios.OursPerMessage].MessagesPerSecond / plain,
            RatioPerMessageAtCommit = medians[Scenarios.OursPerMessageAtCommit].MessagesPerSecond / plain,
            RatioBatch = medians[Scenarios.OursBatch].MessagesPerSecond / plain,
            RatioBatchSetBased = medians[Scenarios.OursBatchSet].MessagesPerSecond / plain,
            LowLoad = lowLoad,
            Runs = runs,
        }, new JsonSerializerOptions { WriteIndented = true }));
        Console.Error.WriteLine($"written to {directory}/sqs-{stamp}.md and .json");
    }

    private static string DescribeLowLoad(string name) => name switch
    {
        Scenarios.LowLoadPlain => "Plain worker",
        Scenarios.LowLoadDefault => "IdempotentSqsWorker, default options",
        _ => name,
    };

    private static double Percentile(double[] sorted, double p) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Clamp((int)Math.Ceiling(p * sorted.Length) - 1, 0, sorted.Length - 1)];

    private static double PairedRatio(List<ScenarioResult> runs, string name)
    {
        var ratios = runs.Where(r => r.Scenario == name)
            .Select(r => r.MessagesPerSecond / runs.Single(p => p.Scenario == Scenarios.Plain && p.Round == r.Round).MessagesPerSecond)
            .Order()
            .ToList();
        return ratios.Count % 2 == 1 ? ratios[ratios.Count / 2] : (ratios[(ratios.Count / 2) - 1] + ratios[ratios.Count / 2]) / 2;
    }

    private static string Describe(string name) => name switch
    {
        Scenarios.Plain => "plain worker (own transaction per message, no idempotency)",
        Scenarios.OursPerMessage => "IdempotentSqsWorker, transaction per message",
        Scenarios.OursPerMessageAtCommit => "IdempotentSqsWorker, transaction per message, claim at commit",
        Scenarios.OursBatch => "IdempotentSqsWorker, default options (one transaction per receive, per-message handler)",
        Scenarios.OursBatchSet => "IdempotentSqsWorker, one transaction per batch, set-based batch handler",
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

/// <summary>One low-load row: latencies of every round pooled.</summary>
internal sealed record LowLoadRow(string Key, string Name, double P50Ms, double P99Ms, int Samples, string Rounds);
