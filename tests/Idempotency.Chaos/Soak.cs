using System.Diagnostics;
using System.Globalization;
using System.Text;
using Dapper;
using Npgsql;

namespace Idempotency.Chaos;

/// <summary>
/// <c>--soak</c> (./build.sh soak; not part of the tests): N messages (1,000,000 by default) with unique keys through the
/// real Kafka consumer (mock cluster, 12 partitions, batches of 100) over PostgreSQL, with a 1 minute
/// <c>Retention</c> and the retention pruner every 10 s, so the keys table reaches a steady state instead of growing.
/// Every 10 s it samples the consumer's resident set (VmRSS of the child process), its progress, the keys table's total
/// size and its live and dead tuples, and the rows pruned; writes soak.csv, soak.md and soak.png (gnuplot) to the
/// results directory (default benchmarks/results). Fails when an effect is missing or doubled at the end.
/// </summary>
internal static class Soak
{
    public static async Task<int> RunAsync(int messages, string resultsDirectory, TimeSpan limit)
    {
        var clock = Stopwatch.StartNew();
        var runId = $"{DateTime.UtcNow:HHmmss}_soak";
        Console.WriteLine($"soak: {messages:N0} messages through Kafka (mock, 12 partitions) over PostgreSQL, retention 60 s, pruner every 10 s; limit {limit.TotalMinutes:0} min");
        await using var kafka = new KafkaRig(partitions: 12);
        await using var postgres = new PostgresRig();
        await postgres.SetupAsync(runId);
        await kafka.SetupAsync(runId);
        var args = new Dictionary<string, string>(StringComparer.Ordinal) { ["broker"] = "kafka", ["store"] = "postgres", ["delay"] = "0", ["retention-s"] = "60", ["prune-s"] = "10" };
        postgres.AddChildArgs(args);
        kafka.AddChildArgs(args);
        args["batch"] = "100";

        // Produce in chunks of 50,000 in the background while the consumer runs.
        var produced = 0;
        var producer = Task.Run(async () =>
        {
            for (var start = 0; start < messages; start += 50_000)
            {
                var chunk = Enumerable.Range(start, Math.Min(50_000, messages - start)).Select(i => new ChaosMessage($"s-{i:D7}", $"ok:s-{i:D7}")).ToList();
                await kafka.ProduceAsync(chunk);
                Interlocked.Add(ref produced, chunk.Count);
            }
        });

        Directory.CreateDirectory(resultsDirectory);
        var csv = new StringBuilder("seconds,processed,produced,rss_mb,table_mb,live_tuples,dead_tuples,pruned\n");
        var child = ChildProcess.Start(args);
        var rows = new List<(double T, int Processed, double Rss, double TableMb, long Live, long Dead, long Pruned)>();
        var failure = "";
        try
        {
            await using var connection = new NpgsqlConnection(postgres.DirectConnectionString);
            await connection.OpenAsync();
            while (clock.Elapsed < limit)
            {
                await Task.Delay(TimeSpan.FromSeconds(10));
                var rss = Rss(child.Pid);
                var stats = await connection.QuerySingleAsync<(long Size, long Live, long Dead)>(
                    "SELECT pg_total_relation_size(c.oid), coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid WHERE n.nspname = @schema AND c.relname = 'processed_messages'",
                    new { schema = postgres.Schema });
                var row = (clock.Elapsed.TotalSeconds, child.Processed, rss, stats.Size / 1048576.0, stats.Live, stats.Dead, Interlocked.Read(ref child.Pruned));
                rows.Add(row);
                csv.Append(CultureInfo.InvariantCulture, $"{row.TotalSeconds:0},{row.Processed},{Volatile.Read(ref produced)},{rss:0.0},{row.Item4:0.0},{row.Live},{row.Dead},{row.Item7}\n");
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"soak: {row.TotalSeconds,5:0} s  processed {row.Processed,9:N0}/{Volatile.Read(ref produced):N0}  rss {rss,6:0.0} MB  keys table {row.Item4,6:0.0} MB  live {row.Live,9:N0}  dead {row.Dead,9:N0}  pruned {row.Item7,9:N0}"));
                if (child.HasExited)
                {
                    failure = "the consumer exited: " + child.StderrTail;
                    break;
                }

                if (child.Processed >= messages)
                {
                    break;
                }
            }

            await producer;
            await child.StopAsync(TimeSpan.FromSeconds(30));
            var effects = await connection.QuerySingleAsync<(long Keys, long Applied)>($"SELECT count(*), coalesce(sum(applied), 0) FROM {postgres.Schema}.effects");
            if (failure.Length == 0 && (effects.Keys != messages || effects.Applied != messages))
            {
                failure = $"effects: {effects.Keys:N0} keys, {effects.Applied:N0} applied; expected {messages:N0} each";
            }

            Console.WriteLine($"soak: effects {effects.Keys:N0} keys / {effects.Applied:N0} applied for {messages:N0} messages in {clock.Elapsed.TotalSeconds:0} s");
        }
        finally
        {
            child.Dispose();
        }

        var csvPath = Path.Combine(resultsDirectory, "soak.csv");
        await File.WriteAllTextAsync(csvPath, csv.ToString());
        var png = Path.Combine(resultsDirectory, "soak.png");
        var plotted = await PlotAsync(csvPath, png);
        await File.WriteAllTextAsync(Path.Combine(resultsDirectory, "soak.md"), Summary(messages, rows, clock.Elapsed, failure, plotted ? "soak.png" : null));
        Console.WriteLine($"soak: {(failure.Length == 0 ? "PASS" : "FAIL: " + failure)}; wrote {csvPath}, soak.md{(plotted ? ", soak.png" : " (no chart: gnuplot missing)")}");
        return failure.Length == 0 && rows.Count > 0 && rows[^1].Processed >= messages ? 0 : 1;
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

    private static string Summary(int messages, List<(double T, int Processed, double Rss, double TableMb, long Live, long Dead, long Pruned)> rows, TimeSpan total, string failure, string? png)
    {
        var sb = new StringBuilder();
        sb.AppendLine("# Soak run");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{messages:N0} messages (unique keys) through the Kafka consumer (mock cluster, 12 partitions, batches of 100) over PostgreSQL; `Retention` 60 s, the retention pruner every 10 s; {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores (shared), {total.TotalSeconds:0} s. Verdict: {(failure.Length == 0 ? "PASS (every key exactly one effect)" : "FAIL: " + failure)}.");
        sb.AppendLine("Repeat: `./build.sh soak` (or `--soak --messages N`).");
        sb.AppendLine();
        if (rows.Count > 0)
        {
            var steady = rows.Skip(rows.Count / 2).ToList();
            sb.AppendLine(CultureInfo.InvariantCulture, $"- consumer resident set: first sample {rows[0].Rss:0} MB, max {rows.Max(r => r.Rss):0} MB, last {rows[^1].Rss:0} MB; second half min/max {steady.Min(r => r.Rss):0}/{steady.Max(r => r.Rss):0} MB");
            sb.AppendLine(CultureInfo.InvariantCulture, $"- keys table (with indexes): max {rows.Max(r => r.TableMb):0.0} MB, last {rows[^1].TableMb:0.0} MB; live tuples max {rows.Max(r => r.Live):N0}, last {rows[^1].Live:N0}; dead tuples max {rows.Max(r => r.Dead):N0}, last {rows[^1].Dead:N0}");
            sb.AppendLine(CultureInfo.InvariantCulture, $"- rows pruned: {rows[^1].Pruned:N0}; throughput {rows[^1].Processed / rows[^1].T:N0} msg/s overall");
            sb.AppendLine();
        }

        if (png is not null)
        {
            sb.AppendLine($"![soak]({png})");
            sb.AppendLine();
        }

        sb.AppendLine("| s | processed | RSS MB | table MB | live | dead | pruned |");
        sb.AppendLine("|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var r in rows)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"| {r.T:0} | {r.Processed:N0} | {r.Rss:0.0} | {r.TableMb:0.0} | {r.Live:N0} | {r.Dead:N0} | {r.Pruned:N0} |");
        }

        return sb.ToString();
    }

    private static async Task<bool> PlotAsync(string csv, string png)
    {
        if (!File.Exists("/usr/bin/gnuplot"))
        {
            return false;
        }

        var script = $"""
            set terminal pngcairo size 1100,650 noenhanced
            set output '{png}'
            set datafile separator ','
            set key autotitle columnhead top left
            set xlabel 'seconds'
            set ylabel 'MB'
            set y2label 'messages / tuples (thousands)'
            set y2tics
            set ytics nomirror
            set grid
            set title 'soak: consumer RSS, keys table size, live/dead tuples, processed'
            plot '{csv}' using 1:4 with lines lw 2 title 'consumer RSS (MB)', \
                 '' using 1:5 with lines lw 2 title 'keys table (MB)', \
                 '' using 1:($6/1000) axes x1y2 with lines title 'live tuples (k)', \
                 '' using 1:($7/1000) axes x1y2 with lines title 'dead tuples (k)', \
                 '' using 1:($2/1000) axes x1y2 with lines dt 2 title 'processed (k)'
            """;
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

        return p.ExitCode == 0 && File.Exists(png);
    }
}
