using System.Text.Json.Nodes;

namespace Idempotency.Benchmarks;

/// <summary>One normalised benchmark row. Kind: ceiling, baseline, hand-written, default, per-message, batch, replay, peer or other.</summary>
internal sealed class SummaryRow
{
    /// <summary>The benchmark that measured it (kafka, rabbitmq, sqs, redis, aggregator).</summary>
    public required string Source { get; init; }

    public required string Broker { get; init; }

    public required string Store { get; init; }

    public required string Scenario { get; init; }

    public required string Kind { get; init; }

    /// <summary>The benchmark's own key for the row (RabbitMQ), for looking rows up.</summary>
    public string? Tag { get; init; }

    public double MessagesPerSecond { get; init; }

    public double? P50Ms { get; init; }

    public double? P99Ms { get; init; }

    public double? PeakWorkingSetMiB { get; init; }

    /// <summary>How the benchmark measured latency (the benchmarks differ; see docs/benchmarks.md).</summary>
    public string? LatencyNote { get; init; }

    public string? Baseline { get; set; }

    public double? RatioToBaseline { get; set; }

    public string? Ceiling { get; set; }

    public double? RatioToCeiling { get; set; }

    public List<TargetCheck> Targets { get; } = [];

    // Resolution hints (not serialised).
    [System.Text.Json.Serialization.JsonIgnore]
    public Func<Summary, SummaryRow?>? BaselineOf { get; init; }

    [System.Text.Json.Serialization.JsonIgnore]
    public Func<Summary, SummaryRow?>? CeilingOf { get; init; }

    [System.Text.Json.Serialization.JsonIgnore]
    public List<TargetSpec> TargetSpecs { get; init; } = [];
}

/// <summary>A target from the issues: Against is "baseline", "ceiling" or the scenario of another row.</summary>
internal sealed record TargetSpec(string Against, double Threshold, string Issue, Func<Summary, SummaryRow?>? Other = null);

internal sealed record TargetCheck(string Against, double Threshold, double? Value, bool? Met, string Issue)
{
    public string Describe() => $">= {Threshold:0.##}x {Against}";
}

internal sealed class Summary
{
    private const string Issue16 = "#16";

    // The #16 targets of batching off and of the set-based batch mode are taken against these same-broker consumers.
    private const string HandKeyTarget = "hand-written key-row consumer (same broker)";
    private const string HandBatchTarget = "hand-written 100-key batch consumer (same broker)";

    public List<SummaryRow> Rows { get; } = [];

    public List<string> Notes { get; } = [];

    public DateTime StartedUtc { get; init; }

    public static Summary Build(RepoPaths paths, List<ChildRun> runs, DateTime started)
    {
        var summary = new Summary { StartedUtc = started };
        foreach (var run in runs)
        {
            if (!run.Succeeded)
            {
                summary.Notes.Add($"{run.Name}: the benchmark failed in this run ({run.Error}); its rows are missing.");
                continue;
            }

            var file = run.Name == "sqs"
                ? new DirectoryInfo(paths.Results).GetFiles("sqs-*.json").Where(f => f.LastWriteTimeUtc >= run.StartedUtc).OrderByDescending(f => f.LastWriteTimeUtc).FirstOrDefault()?.FullName
                : Path.Combine(paths.Results, run.Name + ".json");
            if (file is null || !File.Exists(file) || File.GetLastWriteTimeUtc(file) < run.StartedUtc)
            {
                summary.Notes.Add($"{run.Name}: no results file written by this run; its rows are missing.");
                continue;
            }

            var json = JsonNode.Parse(File.ReadAllText(file))!;
            switch (run.Name)
            {
                case "kafka": summary.AddKafka(json); summary.AddKafka16Notes(json); break;
                case "rabbitmq": summary.AddRabbitMq(json); break;
                case "sqs": summary.AddSqs(json); break;
                case "redis": summary.AddRedis(json); break;
            }
        }

        return summary;
    }

    // ---- run-wide ceilings: PostgreSQL (Kafka's run or the aggregator's), Redis SET NX (the Redis run) ----
    private SummaryRow? PgSingle(int connections) => Rows.FirstOrDefault(r => r.Kind == "ceiling" && r.Store == "postgres" && r.Source is "kafka" or "aggregator" && r.Scenario.Contains("single-row", StringComparison.Ordinal) && r.Scenario.Contains($", {connections} conn", StringComparison.Ordinal));

    private SummaryRow? PgBatch() => Rows.FirstOrDefault(r => r.Kind == "ceiling" && r.Store == "postgres" && r.Source is "kafka" or "aggregator" && r.Scenario.Contains("100-key", StringComparison.Ordinal));

    private SummaryRow? ByScenario(string source, string prefix) => Rows.FirstOrDefault(r => r.Source == source && r.Scenario.StartsWith(prefix, StringComparison.Ordinal));

    public void AddOwnCeilings(IEnumerable<SummaryRow> rows) => Rows.InsertRange(0, rows);

    private void AddKafka(JsonNode json)
    {
        const string Issue = "#3";
        const string Latency = "throughput runs: the pipeline call per message (per batch in batch mode), ceilings one transaction; publish -> commit latency is in the low-load notes";
        foreach (var r in json["rows"]!.AsArray())
        {
            var name = (string)r!["Name"]!;
            var (kind, scenario) = name switch
            {
                _ when name.StartsWith("ceiling: claim + update tx", StringComparison.Ordinal) => ("ceiling", "PostgreSQL single-row insert-on-conflict + update tx" + name["ceiling: claim + update tx".Length..]),
                _ when name.StartsWith("ceiling: 100-key batch", StringComparison.Ordinal) => ("ceiling", "PostgreSQL 100-key batched insert-on-conflict + update tx" + name["ceiling: 100-key batch tx".Length..]),
                "plain at-least-once, 16 partitions concurrent" => ("baseline", name),
                _ when name.StartsWith("hand-written", StringComparison.Ordinal) => ("hand-written", name),
                _ when name.StartsWith("plain", StringComparison.Ordinal) => ("other", name),
                _ when name.StartsWith("ours default options", StringComparison.Ordinal) => ("default", name),
                "ours per-message" or "ours per-message, claim at commit" => ("per-message", name),
                "ours batch mode (100)" => ("batch", name),
                _ when name.StartsWith("ours replay", StringComparison.Ordinal) => ("replay", name),
                _ => ("other", name),
            };
            Rows.Add(new SummaryRow
            {
                Source = "kafka",
                Broker = kind == "ceiling" ? "-" : "kafka",
                Store = "postgres",
                Scenario = scenario,
                Kind = kind,
                MessagesPerSecond = (double)r["MessagesPerSecond"]!,
                P50Ms = (double?)r["P50Ms"],
                P99Ms = (double?)r["P99Ms"],
                PeakWorkingSetMiB = (double?)r["PeakWorkingSetMiB"],
                LatencyNote = Latency,
                BaselineOf = kind == "ceiling" ? null : s => s.ByScenario("kafka", "plain at-least-once, 16"),
                CeilingOf = kind switch
                {
                    "per-message" or "baseline" or "other" or "default" => s => s.PgSingle(16),
                    "hand-written" => name.Contains("batch", StringComparison.Ordinal) ? s => s.PgBatch() : s => s.PgSingle(16),
                    "batch" => s => s.PgBatch(),
                    "replay" => name.Contains("batch", StringComparison.Ordinal) ? s => s.PgBatch() : s => s.PgSingle(16),
                    _ => null,
                },
                TargetSpecs = name switch
                {
                    _ when kind == "default" => [new("baseline", 1.0, Issue16)],
                    "ours per-message" or "ours per-message, claim at commit" => [new(HandKeyTarget, 0.95, Issue16, s => s.ByScenario("kafka", "hand-written: plain consumer + key-row"))],
                    "ours batch mode (100)" => [new(HandBatchTarget, 0.8, Issue16, s => s.ByScenario("kafka", "hand-written: plain consumer + 100-key"))],
                    "ours replay (all duplicates), default options" => [new("ours default options", 3, Issue16, s => s.ByScenario("kafka", "ours default options"))],
                    "ours replay (all duplicates), per-message" => [new("ours per-message", 3, Issue, s => s.ByScenario("kafka", "ours per-message"))],
                    "ours replay (all duplicates), per-message, claim at commit" => [new("ours per-message, claim at commit", 3, Issue, s => s.ByScenario("kafka", "ours per-message, claim at commit"))],
                    _ => [],
                },
            });
        }
    }

    /// <summary>A number from a results file; NaN and infinities are written as strings there, and read as null.</summary>
    private static double? Number(JsonNode? node) => node is JsonValue value && value.TryGetValue<double>(out var number) ? number : null;

    private void AddKafka16Notes(JsonNode json) => LowLoadNote("kafka", json["lowLoad"]?.AsArray(), "Name", "P99Ms", "P50Ms");

    /// <summary>The low-load target (one message in flight): p99 of the default <= plain p99 + 2 ms, publish -> effect committed.</summary>
    private void LowLoadNote(string source, JsonArray? rows, string name, string p99, string p50)
    {
        if (rows is not { Count: >= 2 })
        {
            Notes.Add($"{source}: no low-load latency in this run.");
            return;
        }

        var parts = rows.Select(r => $"{(string)r![name]!} p50 {Number(r[p50]):0.0} ms / p99 {Number(r[p99]):0.0} ms");
        var plain = Number(rows[0]![p99]) ?? double.NaN;
        var byDefault = Number(rows[1]![p99]) ?? double.NaN;
        Notes.Add($"{source} low load (one message in flight; publish -> effect committed): {string.Join("; ", parts)}. Target #16 default p99 <= plain p99 + 2 ms: {(byDefault <= plain + 2 ? "met" : "NOT met")} ({byDefault - plain:+0.0;-0.0} ms).");
    }

    private void AddRabbitMq(JsonNode json)
    {
        var concurrency = (int?)json["concurrency"] ?? 4;
        var lowLoad = json["lowLoad"]?.AsArray() ?? [];
        JsonNode? Latency(string key) => lowLoad.FirstOrDefault(l => (string?)l!["Key"] == key);
        SummaryRow? Key(Summary s, string key) => s.Rows.FirstOrDefault(x => x.Source == "rabbitmq" && x.Tag == key);
        foreach (var r in json["throughput"]!.AsArray())
        {
            var key = (string)r!["Key"]!;
            var name = (string)r["Name"]!;
            var kind = key switch
            {
                "sql-plain" or "sql-key" or "sql-batch" => "ceiling",
                "plain" => "baseline",
                "hand-key" or "hand-batch" => "hand-written",
                "default" => "default",
                "per-message" or "at-commit" => "per-message",
                "set-based" => "batch",
                "wolverine" => "peer",
                _ => "other",
            };
            var latency = Latency(key);
            Rows.Add(new SummaryRow
            {
                Source = "rabbitmq",
                Broker = kind == "ceiling" ? "-" : "rabbitmq",
                Store = "postgres",
                Scenario = kind == "ceiling" ? $"{name}, {concurrency} conn (RabbitMQ run)" : name,
                Kind = kind,
                Tag = key,
                MessagesPerSecond = (double)r["MessagesPerSecond"]!,
                P50Ms = Number(latency?["P50Ms"]),
                P99Ms = Number(latency?["P99Ms"]),
                LatencyNote = "low load (one message in flight): publish -> effect committed",
                BaselineOf = kind == "ceiling" ? null : s => Key(s, "plain"),
                CeilingOf = key switch
                {
                    "set-based" or "hand-batch" => s => Key(s, "sql-batch"),
                    "per-message" or "at-commit" or "hand-key" => s => Key(s, "sql-key"),
                    "plain" => s => Key(s, "sql-plain"),
                    _ => null,
                },
                TargetSpecs = key switch
                {
                    "default" => [new("baseline", 1.0, Issue16), new("Wolverine durable inbox", 3, Issue16, s => Key(s, "wolverine"))],
                    "per-message" or "at-commit" => [new(HandKeyTarget, 0.95, Issue16, s => Key(s, "hand-key"))],
                    "set-based" => [new(HandBatchTarget, 0.8, Issue16, s => Key(s, "hand-batch"))],
                    _ => [],
                },
            });
        }

        LowLoadNote("rabbitmq", lowLoad, "Name", "P99Ms", "P50Ms");
        var cpu = json["throughput"]!.AsArray().ToDictionary(r => (string)r!["Key"]!, r => Number(r!["ClientCpuMicroseconds"]));
        if (cpu.GetValueOrDefault("plain") is { } plainCpu && cpu.GetValueOrDefault("default") is { } defaultCpu)
        {
            Notes.Add($"rabbitmq client CPU per message: plain {plainCpu:0} µs, default {defaultCpu:0} µs, batching off {cpu.GetValueOrDefault("per-message"):0} µs. Target #16 default <= plain: {(defaultCpu <= plainCpu ? "met" : "NOT met")}.");
        }

        Notes.Add($"rabbitmq: machine load average {(string?)json["loadStart"]} at the start of its run, {(string?)json["loadEnd"]} at the end.");
    }

    private void AddSqs(JsonNode json)
    {
        const string Issue = "#5";
        var pollers = (int?)json["Pollers"] ?? 4;
        foreach (var r in json["Median"]!.AsArray())
        {
            var scenario = (string)r!["Scenario"]!;
            var (kind, name) = scenario switch
            {
                "plain" => ("baseline", "plain worker, own transaction per message"),
                "ours-message" => ("per-message", "IdempotentSqsWorker, transaction per message"),
                "ours-message-at-commit" => ("per-message", "IdempotentSqsWorker, transaction per message, claim at commit"),
                "ours-batch" => ("default", "IdempotentSqsWorker, default options (one transaction per receive of up to 10, per-message handler)"),
                "ours-batch-set" => ("batch", "IdempotentSqsWorker, transaction per batch of 10 (set-based handler)"),
                _ => ("other", scenario),
            };
            var paired = (double?)json["PairedRatios"]?[scenario];
            Rows.Add(new SummaryRow
            {
                Source = "sqs",
                Broker = "sqs",
                Store = "postgres",
                Scenario = paired is { } p ? $"{name} (paired ratio {p:0.00}x)" : name,
                Kind = kind,
                MessagesPerSecond = (double)r["MessagesPerSecond"]!,
                P50Ms = (double?)r["P50Ms"],
                P99Ms = (double?)r["P99Ms"],
                PeakWorkingSetMiB = (double?)r["PeakWorkingSetBytes"] / 1048576.0,
                LatencyNote = "receive to delete, per message (median round; peak working set of the scenario's own process)",
                BaselineOf = s => s.Rows.FirstOrDefault(x => x.Source == "sqs" && x.Kind == "baseline"),
                CeilingOf = kind == "batch" ? s => s.PgBatch() : s => s.PgSingle(pollers == 16 ? 16 : pollers >= 4 ? 4 : 1),
                TargetSpecs = kind == "default" ? [new("baseline", 1.0, Issue16)] : kind is "per-message" or "batch" ? [new("baseline", 0.85, Issue)] : [],
            });
        }

        LowLoadNote("sqs", json["LowLoad"]?.AsArray(), "Name", "P99Ms", "P50Ms");
        Notes.Add("sqs: no replay-of-processed-keys scenario in that benchmark yet.");
    }

    private void AddRedis(JsonNode json)
    {
        const string Issue = "#6";
        foreach (var r in json["rows"]!.AsArray())
        {
            var name = (string)r!["Scenario"]!;
            var (kind, store) = name switch
            {
                _ when name.StartsWith("raw SET NX", StringComparison.Ordinal) || name.StartsWith("redis-benchmark", StringComparison.Ordinal) => ("ceiling", "redis"),
                _ when name.StartsWith("store claim + complete, one key", StringComparison.Ordinal) => ("per-message", "redis"),
                _ when name.StartsWith("store claim + complete, batches", StringComparison.Ordinal) => ("batch", "redis"),
                _ when name.StartsWith("PostgreSQL alone", StringComparison.Ordinal) => ("baseline", "postgres"),
                _ when name.StartsWith("layered", StringComparison.Ordinal) => ("replay", "redis+postgres"),
                _ => ("other", "redis"),
            };
            var single = name.Contains("single messages", StringComparison.Ordinal) || name.Contains("one key", StringComparison.Ordinal);
            Rows.Add(new SummaryRow
            {
                Source = "redis",
                Broker = "- (store only)",
                Store = store,
                Scenario = (name.StartsWith("raw SET NX", StringComparison.Ordinal) ? "Redis " : "") + name,
                Kind = kind,
                MessagesPerSecond = (double?)r["rate"] ?? 0,
                P50Ms = (double?)r["p50ms"],
                P99Ms = (double?)r["p99ms"],
                PeakWorkingSetMiB = (double?)r["peakWorkingSetBytes"] / 1048576.0,
                LatencyNote = "per operation (one in flight) or per batch of 100",
                // Layered rows compare with PostgreSQL alone on the same traffic; store rows with raw SET NX.
                BaselineOf = kind == "replay" ? s => s.ByScenario("redis", single ? "PostgreSQL alone, single" : "PostgreSQL alone, batches") : null,
                CeilingOf = kind is "ceiling" or "baseline" or "replay" ? null : single ? s => s.ByScenario("redis", "Redis raw SET NX PX, 16") : s => s.ByScenario("redis", "Redis raw SET NX PX, pipelined"),
                TargetSpecs = kind == "batch" ? [new("ceiling", 0.5, Issue)] : [],
            });
        }
    }

    /// <summary>Fills the ratios and target checks once all rows are in.</summary>
    public void Resolve()
    {
        foreach (var row in Rows)
        {
            if (row.BaselineOf?.Invoke(this) is { } baseline && baseline != row && baseline.MessagesPerSecond > 0)
            {
                row.Baseline = baseline.Scenario;
                row.RatioToBaseline = row.MessagesPerSecond / baseline.MessagesPerSecond;
            }

            if (row.CeilingOf?.Invoke(this) is { } ceiling && ceiling.MessagesPerSecond > 0)
            {
                row.Ceiling = ceiling.Scenario;
                row.RatioToCeiling = row.MessagesPerSecond / ceiling.MessagesPerSecond;
            }

            foreach (var spec in row.TargetSpecs)
            {
                double? value = spec.Against switch
                {
                    "baseline" => row.RatioToBaseline,
                    "ceiling" => row.RatioToCeiling,
                    _ => spec.Other?.Invoke(this) is { MessagesPerSecond: > 0 } other ? row.MessagesPerSecond / other.MessagesPerSecond : null,
                };
                var against = spec.Against switch { "baseline" => "baseline", "ceiling" => "ceiling", _ => spec.Against };
                row.Targets.Add(new TargetCheck(against, spec.Threshold, value, value is { } v ? v >= spec.Threshold : null, spec.Issue));
            }
        }
    }
}
