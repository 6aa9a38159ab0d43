using System.Globalization;
using System.Text;
using System.Text.Json;
using ScottPlot;

namespace Idempotency.Benchmarks;

internal sealed class SummaryReport(Summary summary, MachineInfo machine, List<ChildRun> runs, bool full, TimeSpan elapsed)
{
    private static readonly string[] Kinds = ["ceiling", "baseline", "hand-written", "default", "per-message", "batch", "replay", "peer", "other"];

    public void Write(RepoPaths paths)
    {
        File.WriteAllText(Path.Combine(paths.Results, "summary.json"), JsonSerializer.Serialize(new
        {
            dateUtc = summary.StartedUtc,
            mode = full ? "full" : "quick",
            elapsedSeconds = Math.Round(elapsed.TotalSeconds),
            machine,
            runs = runs.Select(r => new { r.Name, r.Succeeded, r.ExitCode, elapsedSeconds = Math.Round(r.Elapsed.TotalSeconds), r.Error }),
            rows = summary.Rows,
            targets = summary.Rows.SelectMany(r => r.Targets.Select(t => new { r.Broker, r.Store, r.Scenario, t.Against, t.Threshold, t.Value, t.Met, t.Issue })),
            notes = summary.Notes,
        }, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase }));
        File.WriteAllText(Path.Combine(paths.Results, "summary.md"), Markdown());
        Chart(Path.Combine(paths.Results, "summary.png"));
        Console.WriteLine($"bench: wrote {paths.Results}/summary.json, summary.md, summary.png");
    }

    public string Table()
    {
        var md = new StringBuilder();
        md.AppendLine("| source | broker | store | scenario | kind | msgs/s | p50 ms | p99 ms | peak WS MiB | x baseline | x ceiling | target | met? |");
        md.AppendLine("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|");
        foreach (var r in summary.Rows.OrderBy(r => SourceOrder(r.Source)).ThenBy(r => Array.IndexOf(Kinds, r.Kind)))
        {
            var targets = r.Targets.Count == 0 ? "" : string.Join("; ", r.Targets.Select(t => t.Describe()));
            var met = r.Targets.Count == 0 ? "" : string.Join("; ", r.Targets.Select(t => t.Met switch { true => $"yes ({t.Value:0.00})", false => $"**NO** ({t.Value:0.00})", null => "n/a" }));
            md.AppendLine(CultureInfo.InvariantCulture, $"| {r.Source} | {r.Broker} | {r.Store} | {r.Scenario} | {r.Kind} | {r.MessagesPerSecond:N0} | {F(r.P50Ms)} | {F(r.P99Ms)} | {F(r.PeakWorkingSetMiB, "0")} | {F(r.RatioToBaseline)} | {F(r.RatioToCeiling)} | {targets} | {met} |");
        }

        return md.ToString();
    }

    private string Markdown()
    {
        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# Benchmark summary ({summary.StartedUtc:yyyy-MM-dd HH:mm} UTC, {(full ? "full" : "quick")} arguments, {elapsed.TotalMinutes:0.0} min{(runs.All(r => r.Elapsed == TimeSpan.Zero) ? ", re-rendered from existing results: machine load below is of the re-render" : "")})");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"Machine: {machine.Cores} cores ({machine.Cpu}), {machine.MemoryGiB:0.0} GiB, {machine.Os}, {machine.Runtime}. Load average (1/5/15 min) at the start {machine.LoadAverageStart}, at the end {machine.LoadAverageEnd}; the machine is shared with other work, so absolute numbers move between runs: read the ratios, each taken within one benchmark run.");
        md.AppendLine();
        md.AppendLine("Runs: " + string.Join(", ", runs.Select(r => $"{r.Name} {(r.Succeeded ? "ok" : "FAILED: " + r.Error)} ({r.Elapsed.TotalSeconds:0} s)")) + ".");
        md.AppendLine();
        md.Append(Table());
        md.AppendLine();
        md.AppendLine("Targets (from the issues):");
        md.AppendLine();
        md.AppendLine("| issue | broker / store | scenario | target | value | met? |");
        md.AppendLine("|---|---|---|---|---:|---|");
        foreach (var r in summary.Rows)
        {
            foreach (var t in r.Targets)
            {
                md.AppendLine(CultureInfo.InvariantCulture, $"| {t.Issue} | {r.Broker} / {r.Store} | {r.Scenario} | {t.Describe()} | {F(t.Value)} | {(t.Met switch { true => "yes", false => "**NO**", null => "n/a" })} |");
            }
        }

        var all = summary.Rows.SelectMany(r => r.Targets).ToList();
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"{all.Count(t => t.Met == true)} of {all.Count} targets met.");
        if (summary.Notes.Count > 0)
        {
            md.AppendLine();
            foreach (var note in summary.Notes)
            {
                md.AppendLine("- " + note);
            }
        }

        md.AppendLine();
        md.AppendLine("Baseline: the plain at-least-once consumer of the same benchmark run doing the same business write (Redis layered rows: PostgreSQL alone on the same traffic). Hand-written (Kafka, RabbitMQ): that plain consumer made idempotent by hand on the same broker, with the same concurrency, prefetch or partitions, business write and key table: a key-row insert in each message's transaction (`INSERT ... ON CONFLICT DO NOTHING`, the write, `COMMIT`, then the ack or offset), or 100-key batch transactions of what is ready at the set-based batch mode's concurrency; the #16 targets of batching off (>= 0.95x) and of the set-based batch mode (>= 0.8x) are taken against these. Ceiling (context, no broker): the SQL plain transaction + key-row insert as a bare loop (Kafka: 16 connections; RabbitMQ: its own C# loop at its concurrency; SQS: 4 connections), the 100-key batched transaction for batch modes, raw Redis SET NX for the Redis store; a hand-written row's x ceiling is what the broker costs. RabbitMQ p50/p99: the low-load run (one message in flight), publish -> effect committed; other brokers' latency columns are measured per benchmark (see docs/benchmarks.md); the low-load latency of Kafka and RabbitMQ is in the notes.");
        return md.ToString();
    }

    private void Chart(string path)
    {
        var plot = new Plot();
        var colors = new Dictionary<string, Color>
        {
            ["default"] = Colors.MediumPurple,
            ["peer"] = Colors.Gray,
            ["per-message"] = Colors.SteelBlue,
            ["batch"] = Colors.DarkOrange,
            ["replay"] = Colors.SeaGreen,
        };
        var groups = summary.Rows.Where(r => r.RatioToBaseline is not null && colors.ContainsKey(r.Kind))
            .GroupBy(r => r.Broker == "- (store only)" ? "Redis layered store" : r.Broker)
            .OrderBy(g => SourceOrder(g.First().Source))
            .ToList();
        var position = 0.0;
        var ticks = new List<Tick>();
        var bars = new List<Bar>();
        foreach (var group in groups)
        {
            var items = group.OrderBy(r => Array.IndexOf(Kinds, r.Kind)).ToList();
            var start = position;
            foreach (var r in items)
            {
                bars.Add(new Bar
                {
                    Position = position,
                    Value = r.RatioToBaseline!.Value,
                    FillColor = colors[r.Kind],
                    Label = $"{r.RatioToBaseline:0.00}x{Tag(r)}",
                    Size = 0.8,
                });
                position += 1;
            }

            ticks.Add(new Tick((start + position - 1) / 2, group.Key switch { "kafka" => "Kafka", "rabbitmq" => "RabbitMQ", "sqs" => "SQS", _ => group.Key }));
            position += 1; // gap between brokers
        }

        var barPlot = plot.Add.Bars(bars);
        barPlot.ValueLabelStyle.FontSize = 13;
        plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks.ToArray());
        plot.Axes.Bottom.TickLabelStyle.FontSize = 16;
        plot.Axes.Bottom.MajorTickStyle.Length = 0;
        plot.Add.HorizontalLine(1, 1, Colors.Black.WithAlpha(0.5), LinePattern.Dotted);
        plot.Title($"Throughput relative to the plain consumer, same run ({summary.StartedUtc:yyyy-MM-dd HH:mm} UTC, {machine.Cores} cores, load {machine.LoadAverageStart.Split(' ')[0]})");
        plot.YLabel("msgs/s ÷ baseline msgs/s");
        plot.Axes.Margins(bottom: 0, top: 0.15);
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "ours, default options", FillColor = colors["default"] });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "ours, batching off (per message)", FillColor = colors["per-message"] });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "ours batch mode", FillColor = colors["batch"] });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "replay of processed keys (Redis: layered, duplicates)", FillColor = colors["replay"] });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "peer: Wolverine durable inbox", FillColor = colors["peer"] });
        plot.Legend.ManualItems.Add(new LegendItem { LabelText = "1.0x = plain consumer (target for the default; Redis: PostgreSQL alone)", LineColor = Colors.Black.WithAlpha(0.5), LinePattern = LinePattern.Dotted, LineWidth = 1 });
        plot.Legend.Alignment = Alignment.UpperLeft;
        plot.Legend.FontSize = 13;
        plot.SavePng(path, 1400, 700);
    }

    /// <summary>A short tag telling bars of the same kind in one group apart.</summary>
    private static string Tag(SummaryRow r) => r.Scenario switch
    {
        var s when s.Contains("set-based", StringComparison.Ordinal) => "\nset-based",
        var s when r.Kind == "per-message" && s.Contains("at commit", StringComparison.Ordinal) => "\nat commit",
        var s when s.Contains("per-message handler", StringComparison.Ordinal) => "\nper-msg handler",
        var s when r.Kind == "replay" && s.Contains("90% duplicates", StringComparison.Ordinal) => "\nbatches, 90% dup",
        var s when r.Kind == "replay" && s.Contains("single messages", StringComparison.Ordinal) => "\nsingle, 100% dup",
        var s when r.Kind == "replay" && s.Contains("batch", StringComparison.Ordinal) => "\nbatch",
        _ when r.Kind == "replay" => "\nper msg",
        _ => "",
    };

    private static int SourceOrder(string source) => source switch { "aggregator" => 0, "kafka" => 1, "rabbitmq" => 2, "sqs" => 3, "redis" => 4, _ => 5 };

    private static string F(double? value, string format = "0.00") => value is { } v && !double.IsNaN(v) ? v.ToString(format, CultureInfo.InvariantCulture) : "-";
}

/// <summary>Collects BenchmarkDotNet's GitHub-markdown tables into benchmarks/results/micro.md.</summary>
internal static class MicroReport
{
    public static void Collect(RepoPaths paths, MachineInfo machine)
    {
        var dir = Path.Combine(paths.Root, "artifacts", "micro", "results");
        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# Hot-path micro-benchmarks ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC, BenchmarkDotNet short run in-process, load average {MachineInfo.LoadAverage()})");
        foreach (var file in (Directory.Exists(dir) ? Directory.GetFiles(dir, "*-report-github.md") : []).Order(StringComparer.Ordinal))
        {
            md.AppendLine();
            var title = Path.GetFileName(file).Replace("-report-github.md", "", StringComparison.Ordinal).Split('.').Last();
            md.AppendLine("## " + title);
            md.AppendLine();
            md.AppendLine(File.ReadAllText(file).Trim());
        }

        File.WriteAllText(Path.Combine(paths.Results, "micro.md"), md.ToString());
        Console.WriteLine($"bench: wrote {paths.Results}/micro.md ({machine.Cores} cores)");
    }
}

/// <summary>Replaces the generated sections of docs/benchmarks.md (between marker comments), keeping the prose.</summary>
internal static class Docs
{
    public static void Update(RepoPaths paths)
    {
        if (!File.Exists(paths.Docs))
        {
            Console.WriteLine($"bench: {paths.Docs} not found; not updated");
            return;
        }

        var text = File.ReadAllText(paths.Docs);
        text = Replace(text, "summary", Path.Combine(paths.Results, "summary.md"));
        text = Replace(text, "micro", Path.Combine(paths.Results, "micro.md"));
        File.WriteAllText(paths.Docs, text);
        Console.WriteLine($"bench: updated {paths.Docs}");
    }

    private static string Replace(string text, string section, string file)
    {
        var begin = $"<!-- generated:{section}:begin -->";
        var end = $"<!-- generated:{section}:end -->";
        var i = text.IndexOf(begin, StringComparison.Ordinal);
        var j = text.IndexOf(end, StringComparison.Ordinal);
        if (i < 0 || j < i || !File.Exists(file))
        {
            return text;
        }

        // Demote the file's headings below the doc's own.
        var body = string.Join('\n', File.ReadAllLines(file).Select(l => l.StartsWith('#') ? "##" + l : l));
        return text[..(i + begin.Length)] + "\n" + body.Trim() + "\n" + text[j..];
    }
}
