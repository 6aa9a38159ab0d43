using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dapper;
using Npgsql;

namespace Idempotency.Chaos;

/// <summary>
/// <c>--soak</c> (./build.sh soak; not part of the tests): for each broker in turn (Kafka on the mock cluster with 12
/// partitions, RabbitMQ, SQS on the emulator), N messages (1,000,000 by default) with unique keys through the real
/// consumer with the adapter's default options over PostgreSQL, with a 1 minute <c>Retention</c> and the retention
/// pruner every 10 s, so the keys table reaches a steady state instead of growing. The producer runs alongside the
/// consumer, at most <see cref="Backlog"/> messages ahead of it. Every 10 s it samples the consumer's resident set
/// (VmRSS of the child process), its progress, the keys table's total size, its live and dead tuples, and the rows
/// pruned. A broker passes when every key has exactly one effect (read from the business table) and the resident set is
/// flat: after the warm-up (<see cref="WarmUpEnd"/>) its samples stay within <see cref="FlatMb"/> of each other.
/// Writes soak-&lt;broker&gt;.csv/.md/.png per broker, and soak.md/soak.png over every broker's latest run, to the
/// results directory (default benchmarks/results).
/// </summary>
internal static class Soak
{
    /// <summary>The most the resident set may move (max - min) after the warm-up.</summary>
    public const double FlatMb = 50;

    /// <summary>How far the producer may run ahead of the consumer: the broker never holds more than this.</summary>
    private const int Backlog = 50_000;

    private const int Chunk = 10_000;

    private static readonly TimeSpan SampleEvery = TimeSpan.FromSeconds(10);

    public static async Task<int> RunAsync(IReadOnlyList<string> brokers, int messages, string resultsDirectory, TimeSpan limitPerBroker)
    {
        Directory.CreateDirectory(resultsDirectory);
        var failed = 0;
        foreach (var broker in brokers)
        {
            var result = await RunBrokerAsync(broker, messages, resultsDirectory, limitPerBroker);
            failed += result ? 0 : 1;
        }

        // soak.csv was the Kafka-only soak's; soak-kafka.csv replaces it.
        File.Delete(Path.Combine(resultsDirectory, "soak.csv"));
        var plotted = await PlotCombinedAsync(resultsDirectory);
        await File.WriteAllTextAsync(Path.Combine(resultsDirectory, "soak.md"), CombinedSummary(resultsDirectory, plotted));
        Console.WriteLine($"soak: {brokers.Count - failed} of {brokers.Count} brokers passed; wrote {resultsDirectory}/soak.md{(plotted ? " and soak.png" : "")}");
        return failed == 0 ? 0 : 1;
    }

    /// <summary>
    /// Gets the index of the sample that ends the warm-up: the first at which a tenth of the messages is processed, and
    /// never before the third sample (30 s). The flatness is judged on the samples after it.
    /// </summary>
    public static int WarmUpEnd(IReadOnlyList<Sample> rows, int messages)
    {
        for (var i = 2; i < rows.Count; i++)
        {
            if (rows[i].Processed >= messages / 10)
            {
                return i;
            }
        }

        return rows.Count;
    }

    private static BrokerRig CreateRig(string broker) => broker switch
    {
        "kafka" => new KafkaRig(partitions: 12),
        _ => BrokerRig.Create(broker),
    };

    /// <summary>Producers sending side by side: one librdkafka producer pipelines by itself; an SQS call sends only 10.</summary>
    private static int ProduceParallelism(string broker) => broker switch
    {
        "sqs" => 8,
        "rabbitmq" => 2,
        _ => 1,
    };

    private static string Describe(string broker) => broker switch
    {
        "kafka" => "Kafka (librdkafka mock cluster, 3 brokers, 12 partitions; IdempotentKafkaConsumer with default options, librdkafka defaults but auto.offset.reset=earliest)",
        "rabbitmq" => "RabbitMQ (the shared server, a quorum queue; IdempotentRabbitMqConsumer with default options: 1 worker, prefetch 100)",
        _ => "SQS (the fauxqs emulator, a standard queue; IdempotentSqsWorker with default options: 2 pollers, 10 per receive, 20 s long polling)",
    };

    private static async Task<bool> RunBrokerAsync(string broker, int messages, string resultsDirectory, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        var runId = $"{DateTime.UtcNow:HHmmss}_soak_{broker}";
        var loadAtStart = File.ReadAllText("/proc/loadavg").Trim();
        Console.WriteLine($"soak {broker}: {messages:N0} messages, {Describe(broker)}, over PostgreSQL; retention 60 s, pruner every 10 s; limit {limit.TotalMinutes:0} min; load average {loadAtStart}");
        await using var rig = CreateRig(broker);
        await using var postgres = new PostgresRig();
        await postgres.SetupAsync(runId);
        await rig.SetupAsync(runId);
        var args = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["broker"] = broker,
            ["store"] = "postgres",
            ["pg"] = postgres.DirectConnectionString,
            ["schema"] = postgres.Schema,
            ["retention-s"] = "60",
            ["prune-s"] = "10",
        };
        rig.AddDefaultPathChildArgs(args);

        var child = ChildProcess.Start(args);
        var produced = 0;
        using var stopProducing = new CancellationTokenSource();
        var producer = Task.Run(() => ProduceAsync(rig, broker, messages, child, v => Volatile.Write(ref produced, v), stopProducing.Token));
        var csv = new StringBuilder("seconds,processed,produced,rss_mb,table_mb,live_tuples,dead_tuples,pruned,load1\n");
        var rows = new List<Sample>();
        var failures = new List<string>();
        (long Keys, long Applied, long NotOnce) effects = default;
        try
        {
            await using var connection = new NpgsqlConnection(postgres.DirectConnectionString);
            await connection.OpenAsync();
            while (true)
            {
                await Task.Delay(SampleEvery);
                var stats = await connection.QuerySingleAsync<(long Size, long Live, long Dead)>(
                    "SELECT pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE n.nspname = @schema AND c.relname = 'processed_messages'",
                    new { schema = postgres.Schema });
                var row = new Sample(clock.Elapsed.TotalSeconds, Volatile.Read(ref child.Processed), Volatile.Read(ref produced), Rss(child.Pid), stats.Size / 1048576.0, stats.Live, stats.Dead, Interlocked.Read(ref child.Pruned), Load1());
                rows.Add(row);
                csv.Append(CultureInfo.InvariantCulture, $"{row.Seconds:0},{row.Processed},{row.Produced},{row.RssMb:0.0},{row.TableMb:0.0},{row.Live},{row.Dead},{row.Pruned},{row.Load1:0.0}\n");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"soak {broker}: {row.Seconds,5:0} s  processed {row.Processed,9:N0}/{row.Produced:N0}  rss {row.RssMb,6:0.0} MB  keys table {row.TableMb,6:0.0} MB  live {row.Live,9:N0}  dead {row.Dead,9:N0}  pruned {row.Pruned,9:N0}  load {row.Load1:0.0}"));
                if (child.HasExited)
                {
                    failures.Add("the consumer exited: " + child.StderrTail);
                    break;
                }

                if (producer.IsFaulted)
                {
                    failures.Add("producing failed: " + producer.Exception!.GetBaseException().Message);
                    break;
                }

                if (row.Processed >= messages)
                {
                    break;
                }

                if (clock.Elapsed > limit)
                {
                    failures.Add($"not done within {limit.TotalMinutes:0} min: {row.Processed:N0} of {messages:N0} processed ({row.Produced:N0} produced)");
                    break;
                }
            }

            await stopProducing.CancelAsync();
            try
            {
                await producer;
            }
            catch (Exception e) when (e is OperationCanceledException || failures.Count > 0)
            {
            }

            await child.StopAsync(TimeSpan.FromSeconds(60));
            effects = await connection.QuerySingleAsync<(long, long, long)>($"SELECT count(*), coalesce(sum(applied), 0), count(*) FILTER (WHERE applied <> 1) FROM {postgres.Schema}.effects");
            if (effects.Keys != messages || effects.NotOnce != 0)
            {
                failures.Add($"effects: {effects.Keys:N0} keys ({effects.NotOnce:N0} of them not exactly once, {effects.Applied:N0} applied in all); expected {messages:N0} keys, each once");
            }

            Console.WriteLine($"soak {broker}: effects {effects.Keys:N0} keys / {effects.Applied:N0} applied for {messages:N0} messages; {child.Duplicates:N0} duplicates skipped; {clock.Elapsed.TotalSeconds:0} s");
        }
        finally
        {
            child.Dispose();
        }

        var memory = Judge(rows, messages);
        var csvPath = Path.Combine(resultsDirectory, $"soak-{broker}.csv");
        await File.WriteAllTextAsync(csvPath, csv.ToString());
        var png = $"soak-{broker}.png";
        var plotted = await PlotAsync(broker, csvPath, Path.Combine(resultsDirectory, png), rows.Count > memory.WarmUpEnd ? rows[memory.WarmUpEnd].Seconds : null);
        var run = new BrokerRun(broker, messages, clock.Elapsed, rows, memory, effects, child.Duplicates, failures, loadAtStart, File.ReadAllText("/proc/loadavg").Trim());
        await File.WriteAllTextAsync(Path.Combine(resultsDirectory, $"soak-{broker}.md"), BrokerSummary(run, plotted ? png : null));
        Console.WriteLine($"soak {broker}: {(run.Passed ? "PASS" : "FAIL")}: {run.Verdict}; wrote {csvPath}, soak-{broker}.md{(plotted ? ", " + png : " (no chart: gnuplot missing)")}");
        return run.Passed;
    }

    /// <summary>Produces the messages in chunks, each split over side-by-side producers, never more than <see cref="Backlog"/> ahead of the consumer.</summary>
    private static async Task ProduceAsync(BrokerRig rig, string broker, int messages, ChildProcess child, Action<int> reportProduced, CancellationToken ct)
    {
        var parallel = ProduceParallelism(broker);
        for (var start = 0; start < messages; start += Chunk)
        {
            while (start - Volatile.Read(ref child.Processed) >= Backlog)
            {
                await Task.Delay(100, ct);
            }

            var chunk = Enumerable.Range(start, Math.Min(Chunk, messages - start)).Select(i => new ChaosMessage($"s-{i:D7}", $"ok:s-{i:D7}")).ToList();
            await Task.WhenAll(chunk.Chunk((chunk.Count + parallel - 1) / parallel).Select(slice => rig.ProduceAsync(slice)));
            reportProduced(start + chunk.Count);
        }
    }

    private static MemoryVerdict Judge(List<Sample> rows, int messages)
    {
        var warm = WarmUpEnd(rows, messages);
        var after = rows.Skip(warm + 1).ToList();
        if (after.Count < 3)
        {
            return new MemoryVerdict(false, warm, 0, 0, $"memory not judged: {after.Count} samples after the warm-up, at least 3 needed");
        }

        var min = after.Min(r => r.RssMb);
        var max = after.Max(r => r.RssMb);
        var flat = max - min <= FlatMb;
        return new MemoryVerdict(flat, warm, min, max, string.Create(CultureInfo.InvariantCulture,
            $"resident set after the warm-up {min:0}-{max:0} MB over {after.Count} samples: {(flat ? "flat" : "NOT flat")} ({max - min:0} MB spread, at most {FlatMb:0} MB)"));
    }

    private static double Rss(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
            return line is null ? 0 : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024.0;
        }
        catch (IOException)
        {
            return 0;
        }
    }

    private static double Load1() => double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture);

    private const string TableHeader = "| broker | messages | time | msg/s | RSS MB first / warm-up end / max / last | after warm-up min-max (spread) | flat? | keys table MB max / last | dead tuples max / last | pruned | effects | verdict |";

    private const string TableRule = "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---|---|";

    private static string SummaryRow(BrokerRun run)
    {
        var r = run.Rows;
        if (r.Count == 0)
        {
            return $"| {run.Broker} | {run.Messages:N0} | {run.Elapsed.TotalSeconds:0} s | | | | | | | | | FAIL |";
        }

        var m = run.Memory;
        var warmEnd = m.WarmUpEnd < r.Count ? r[m.WarmUpEnd].RssMb.ToString("0", CultureInfo.InvariantCulture) : "-";
        var after = m.Max > 0 ? string.Create(CultureInfo.InvariantCulture, $"{m.Min:0}-{m.Max:0} ({m.Max - m.Min:0})") : "-";
        var effects = run.Effects.Keys == run.Messages && run.Effects.NotOnce == 0 ? $"{run.Effects.Keys:N0} keys, each once" : $"{run.Effects.Keys:N0} keys, {run.Effects.NotOnce:N0} not once";
        return string.Create(CultureInfo.InvariantCulture,
            $"| {run.Broker} | {r[^1].Processed:N0} | {run.Elapsed.TotalSeconds:0} s | {r[^1].Processed / Math.Max(1, r[^1].Seconds):N0} | {r[0].RssMb:0} / {warmEnd} / {r.Max(x => x.RssMb):0} / {r[^1].RssMb:0} | {after} | {(m.Max <= 0 ? "not judged" : m.Flat ? "yes" : "no")} | {r.Max(x => x.TableMb):0.0} / {r[^1].TableMb:0.0} | {r.Max(x => x.Dead):N0} / {r[^1].Dead:N0} | {r[^1].Pruned:N0} | {effects} | {(run.Passed ? "PASS" : "FAIL")} |");
    }

    private const string Rule =
        "Warm-up: until the first 10 s sample at which a tenth of the messages is processed, and at least the first three samples (30 s). " +
        "Flat: every resident-set sample after the warm-up within 50 MB of each other (max - min). " +
        "A broker passes when its memory is flat and the business table holds every key with exactly one effect.";

    private static string BrokerSummary(BrokerRun run, string? png)
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"# Soak run: {run.Broker}");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{run.Messages:N0} messages (unique keys) through {Describe(run.Broker)}, over PostgreSQL (default store options); `Retention` 60 s, the retention pruner every 10 s (its default batch size); the producer at most {Backlog:N0} messages ahead. {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores (shared), load average at the start {run.LoadAtStart}, at the end {run.LoadAtEnd}.");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"Verdict: **{(run.Passed ? "PASS" : "FAIL")}**: {run.Verdict}; {run.Duplicates:N0} redeliveries skipped as duplicates.");
        sb.AppendLine();
        sb.AppendLine(Rule);
        sb.AppendLine(CultureInfo.InvariantCulture, $"Repeat: `./build.sh soak --broker {run.Broker}` (or `--messages N`).");
        sb.AppendLine();
        sb.AppendLine(TableHeader);
        sb.AppendLine(TableRule);
        sb.AppendLine(SummaryRow(run));
        sb.AppendLine();
        if (png is not null)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"![soak {run.Broker}]({png})");
            sb.AppendLine();
        }

        sb.AppendLine("| s | processed | produced | RSS MB | keys table MB | live | dead | pruned | load |");
        sb.AppendLine("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (var i = 0; i < run.Rows.Count; i++)
        {
            var r = run.Rows[i];
            var mark = i == run.Memory.WarmUpEnd ? " (warm-up end)" : "";
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {r.Seconds:0}{mark} | {r.Processed:N0} | {r.Produced:N0} | {r.RssMb:0.0} | {r.TableMb:0.0} | {r.Live:N0} | {r.Dead:N0} | {r.Pruned:N0} | {r.Load1:0.0} |");
        }

        return sb.ToString();
    }

    /// <summary>soak.md: the summary row of every broker's latest soak-&lt;broker&gt;.md in the directory, with links.</summary>
    private static string CombinedSummary(string directory, bool plotted)
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Soak runs");
        sb.AppendLine();
        sb.AppendLine("Each broker's latest `./build.sh soak` run (by default 1,000,000 messages with unique keys through the adapter's default consumer options over PostgreSQL; `Retention` 60 s, the retention pruner every 10 s; the consumer's resident set, the keys table's size and its live and dead tuples sampled every 10 s).");
        sb.AppendLine();
        sb.AppendLine(Rule);
        sb.AppendLine();
        sb.AppendLine(TableHeader);
        sb.AppendLine(TableRule);
        var links = new List<string>();
        foreach (var broker in ChaosOptions.SoakBrokers)
        {
            var md = Path.Combine(directory, $"soak-{broker}.md");
            if (!File.Exists(md))
            {
                continue;
            }

            var lines = File.ReadAllLines(md);
            if (lines.FirstOrDefault(l => l.StartsWith($"| {broker} |", StringComparison.Ordinal)) is { } row)
            {
                sb.AppendLine(row);
            }

            var when = lines.Select(l => System.Text.RegularExpressions.Regex.Match(l, @"\d{4}-\d\d-\d\d \d\d:\d\d UTC")).FirstOrDefault(m => m.Success)?.Value;
            links.Add($"- {broker} ({when}): [soak-{broker}.md](soak-{broker}.md) (every sample), [soak-{broker}.csv](soak-{broker}.csv), [soak-{broker}.png](soak-{broker}.png)");
        }

        sb.AppendLine();
        foreach (var link in links)
        {
            sb.AppendLine(link);
        }

        if (plotted)
        {
            sb.AppendLine();
            sb.AppendLine("![consumer resident set per broker](soak.png)");
        }

        return sb.ToString();
    }

    private static async Task<bool> PlotAsync(string broker, string csv, string png, double? warmUpEndSeconds)
    {
        var warm = warmUpEndSeconds is { } s ? string.Create(CultureInfo.InvariantCulture, $"set arrow from {s:0},graph 0 to {s:0},graph 1 nohead dt 2 lw 1.5 lc rgb 'black'\nset label 'warm-up end' at {s:0},graph 0.5 offset 0.5,0\n") : "";
        return await GnuplotAsync($"""
            set terminal pngcairo size 1100,650 noenhanced
            set output '{png}'
            set datafile separator ','
            set key autotitle columnhead below
            set xlabel 'seconds'
            set ylabel 'MB'
            set y2label 'messages / tuples (thousands)'
            set y2tics
            set ytics nomirror
            set yrange [0:*]
            set grid
            {warm}set title 'soak {broker}: consumer RSS, keys table size, live/dead tuples, processed'
            plot '{csv}' using 1:4 with lines lw 2 title 'consumer RSS (MB)', \
                 '' using 1:5 with lines lw 2 title 'keys table (MB)', \
                 '' using 1:($6/1000) axes x1y2 with lines title 'live tuples (k)', \
                 '' using 1:($7/1000) axes x1y2 with lines title 'dead tuples (k)', \
                 '' using 1:($2/1000) axes x1y2 with lines dt 2 title 'processed (k)'
            """);
    }

    /// <summary>soak.png: the consumer's resident set against the messages processed, one curve per broker's latest CSV.</summary>
    private static async Task<bool> PlotCombinedAsync(string directory)
    {
        var curves = ChaosOptions.SoakBrokers
            .Where(b => File.Exists(Path.Combine(directory, $"soak-{b}.csv")))
            .Select(b => $"'{Path.Combine(directory, $"soak-{b}.csv")}' using ($2/1000):4 with linespoints pt 7 ps 0.4 lw 2 title '{b}'")
            .ToList();
        if (curves.Count == 0)
        {
            return false;
        }

        return await GnuplotAsync($"""
            set terminal pngcairo size 1100,650 noenhanced
            set output '{Path.Combine(directory, "soak.png")}'
            set datafile separator ','
            set key autotitle columnhead bottom right
            set xlabel 'messages processed (thousands)'
            set ylabel 'consumer resident set (MB)'
            set yrange [0:*]
            set grid
            set title 'soak: consumer RSS per broker (default options, PostgreSQL, retention pruner), sampled every 10 s'
            plot {string.Join(", ", curves)}
            """);
    }

    private static async Task<bool> GnuplotAsync(string script)
    {
        if (!File.Exists("/usr/bin/gnuplot"))
        {
            return false;
        }

        var info = new ProcessStartInfo("/usr/bin/gnuplot") { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardError = true };
        using var p = Process.Start(info)!;
        await p.StandardInput.WriteAsync(script);
        p.StandardInput.Close();
        var err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
        {
            Console.Error.WriteLine("soak: gnuplot failed: " + err);
        }

        return p.ExitCode == 0;
    }

    /// <summary>One 10 s sample.</summary>
    internal sealed record Sample(double Seconds, int Processed, int Produced, double RssMb, double TableMb, long Live, long Dead, long Pruned, double Load1);

    private sealed record MemoryVerdict(bool Flat, int WarmUpEnd, double Min, double Max, string Verdict);

    private sealed record BrokerRun(
        string Broker,
        int Messages,
        TimeSpan Elapsed,
        List<Sample> Rows,
        MemoryVerdict Memory,
        (long Keys, long Applied, long NotOnce) Effects,
        int Duplicates,
        List<string> Failures,
        string LoadAtStart,
        string LoadAtEnd)
    {
        public bool Passed => Failures.Count == 0 && Memory.Flat && Rows.Count > 0 && Rows[^1].Processed >= Messages;

        /// <summary>Gets the memory verdict, then every failure, or that every key had exactly one effect.</summary>
        public string Verdict => Memory.Verdict + "; " + (Failures.Count == 0 ? "every key exactly one effect" : string.Join("; ", Failures));
    }
}
