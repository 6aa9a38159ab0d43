using System.Globalization;
using System.Security;
using System.Security.Cryptography;
using System.Text;

namespace Idempotency.Chaos;

/// <summary>The console table, the markdown summary and the TRX file (one UnitTestResult per scenario).</summary>
internal static class Report
{
    private static readonly string[] Header = ["broker", "store", "produced", "unique", "consumer kills (landed)", "server crashes", "faults", "effects", "duplicates skipped", "lost", "unsettled", "extra", "dead-lettered", "load", "verdict"];

    public static string[] Row(ScenarioResult r) =>
    [
        r.Broker, r.Store, N(r.Produced), N(r.Unique), $"{N(r.Kills)} ({N(r.KillsLanded)})", N(r.ServerCrashes), N(r.FaultCount),
        r.DuplicateEffects > 0 ? $"{N(r.Effects)} (+{r.DuplicateEffects} extra)" : N(r.Effects),
        N(r.DuplicatesSkipped), r.WindowLosses.Count > 0 ? $"{N(r.Lost)} (+{r.WindowLosses.Count} in window)" : N(r.Lost), N(r.Unsettled),
        N(r.Verdicts.Count(v => v.Kind is VerdictKind.Extra or VerdictKind.Unexpected)),
        r.DeadLetterMessages != r.DeadLettered ? $"{r.DeadLettered}/{r.Poison} ({r.DeadLetterMessages} msgs)" : $"{r.DeadLettered}/{r.Poison}",
        r.LoadAverage,
        r.Passed ? "PASS" : r.OnlyStalled ? "FAIL (stall)" : "FAIL",
    ];

    public static string Table(IReadOnlyList<ScenarioResult> results)
    {
        var rows = results.Where(r => !r.IsCheck).Select(Row).Prepend(Header).ToList();
        var widths = Enumerable.Range(0, Header.Length).Select(c => rows.Max(r => r[c].Length)).ToArray();
        var sb = new StringBuilder();
        for (var i = 0; i < rows.Count; i++)
        {
            sb.AppendLine(string.Join("  ", rows[i].Select((cell, c) => c < 2 ? cell.PadRight(widths[c]) : cell.PadLeft(widths[c]))));
            if (i == 0)
            {
                sb.AppendLine(string.Join("  ", widths.Select(w => new string('-', w))));
            }
        }

        foreach (var c in results.Where(r => r.IsCheck))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"verdict check {c.Broker}: {(c.Passed ? "PASS" : "FAIL: " + string.Join("; ", c.Violations))}");
        }

        return sb.ToString();
    }

    public static string Markdown(IReadOnlyList<ScenarioResult> results, ChaosOptions options, TimeSpan total, bool partial = false)
    {
        var sb = new StringBuilder();
        sb.AppendLine(CultureInfo.InvariantCulture, $"# Chaos run ({(options.Quick ? "quick" : "full")}{(options.UnderLoad ? ", under load" : "")}){(partial ? $": in progress, {results.Count(r => !r.IsCheck)} of {options.Scenarios.Count} scenarios done" : "")}");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"Seed {options.Seed}, {options.Messages} messages, {options.Kills} kills, {options.Poison} poison per scenario, {options.DuplicateShare:P0} re-sends; {DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC, {Environment.ProcessorCount} cores, total {total.TotalSeconds:0} s.");
        if (options.LoadSummary is not null)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"Under load: {options.LoadSummary}.");
        }

        sb.AppendLine(CultureInfo.InvariantCulture, $"Command: `{options.Command.TrimEnd()}`; load average at the end {File.ReadAllText("/proc/loadavg").Trim()}. The load column is the 1-minute load average when the scenario ended; consumer kills (landed) counts the SIGKILLs whose aimed point was reached.");
        sb.AppendLine();
        sb.AppendLine("| " + string.Join(" | ", Header) + " |");
        sb.AppendLine("|" + string.Concat(Header.Select((_, i) => i < 2 ? "---|" : "---:|")));
        foreach (var r in results.Where(r => !r.IsCheck))
        {
            sb.AppendLine("| " + string.Join(" | ", Row(r)) + " |");
        }

        sb.AppendLine();
        foreach (var c in results.Where(r => r.IsCheck))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"- verdict check {c.Broker}: {(c.Passed ? "PASS" : "FAIL")} in {c.Duration.TotalSeconds:0.0} s ({string.Join("; ", c.Passed ? c.Log.Where(l => l.StartsWith("pass 2: k-", StringComparison.Ordinal)) : c.Violations)})");
        }

        sb.AppendLine();
        foreach (var r in results.Where(r => !r.IsCheck))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {r.Name}: {(r.Passed ? "PASS" : "FAIL")} in {r.Duration.TotalSeconds:0} s");
            sb.AppendLine();
            sb.AppendLine(CultureInfo.InvariantCulture, $"- kills by point: {string.Join(", ", r.KillPoints.Select(k => $"{k.Key} {k.Value}"))}");
            sb.AppendLine(CultureInfo.InvariantCulture, $"- faults: {string.Join(", ", r.Faults.Select(k => $"{k.Key} {k.Value}"))}");
            sb.AppendLine(CultureInfo.InvariantCulture, $"- consumer starts: {r.Restarts}; processed reported {r.ProcessedReported}, duplicates skipped {r.DuplicatesSkipped}; extra effects {r.DuplicateEffects}; DLQ {r.DeadLetterMessages} messages for {r.DeadLettered} keys");
            if (r.OrderNote is not null)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"- order: {r.OrderNote}");
            }

            if (r.WindowLosses.Count > 0)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"- lost within the everysec window (allowed): {string.Join(", ", r.WindowLosses)}");
            }

            if (r.LeaseNote is not null)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"- lease mode: {r.LeaseNote}");
            }

            foreach (var v in r.Violations)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"- VIOLATION: {v}");
            }

            foreach (var v in r.Verdicts.Take(50))
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"  - {v}");
            }

            sb.AppendLine();
        }

        return sb.ToString();
    }

    /// <summary>Writes a TRX in the shape `dotnet test --report-xunit-trx` writes, one UnitTestResult per scenario.</summary>
    public static string Trx(IReadOnlyList<ScenarioResult> results, DateTimeOffset start, DateTimeOffset finish)
    {
        const string TestType = "13cdc9d9-ddb5-4fa4-a97d-d965ccfc6d4b";
        const string ListId = "8c84fa94-04c1-424b-9868-57a2d4851a1d";
        static string X(string s) => SecurityElement.Escape(s) ?? "";
        static string T(DateTimeOffset t) => t.ToString("yyyy-MM-ddTHH:mm:ss.fffffffzzz", CultureInfo.InvariantCulture);
        static Guid Id(string s) => new(MD5.HashData(Encoding.UTF8.GetBytes(s)));
        var sb = new StringBuilder();
        sb.AppendLine("<?xml version=\"1.0\" encoding=\"utf-8\"?>");
        sb.AppendLine(CultureInfo.InvariantCulture, $"<TestRun id=\"{Guid.NewGuid()}\" name=\"chaos {T(start)}\" runUser=\"{X(Environment.UserName)}\" xmlns=\"http://microsoft.com/schemas/VisualStudio/TeamTest/2010\">");
        sb.AppendLine(CultureInfo.InvariantCulture, $"  <Times creation=\"{T(start)}\" queuing=\"{T(start)}\" start=\"{T(start)}\" finish=\"{T(finish)}\" />");
        sb.AppendLine("  <Results>");
        var entries = new List<(Guid Test, Guid Exec, ScenarioResult R)>();
        foreach (var r in results)
        {
            var testId = Id("Idempotency.Chaos." + r.Name);
            var execId = Guid.NewGuid();
            entries.Add((testId, execId, r));
            var outcome = r.Passed ? "Passed" : "Failed";
            var duration = r.Duration.ToString(@"hh\:mm\:ss\.fffffff", CultureInfo.InvariantCulture);
            sb.AppendLine(CultureInfo.InvariantCulture, $"    <UnitTestResult executionId=\"{execId}\" testId=\"{testId}\" testName=\"{X(TestName(r))}\" computerName=\"{X(Environment.MachineName)}\" duration=\"{duration}\" startTime=\"{T(r.Started)}\" endTime=\"{T(r.Started + r.Duration)}\" testType=\"{TestType}\" outcome=\"{outcome}\" testListId=\"{ListId}\" relativeResultsDirectory=\"{execId}\">");
            sb.AppendLine("      <Output>");
            sb.AppendLine(CultureInfo.InvariantCulture, $"        <StdOut>{X(string.Join(Environment.NewLine, r.Log))}</StdOut>");
            if (!r.Passed)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"        <ErrorInfo><Message>{X(string.Join(Environment.NewLine, r.Violations))}</Message></ErrorInfo>");
            }

            sb.AppendLine("      </Output>");
            sb.AppendLine("    </UnitTestResult>");
        }

        sb.AppendLine("  </Results>");
        sb.AppendLine("  <TestDefinitions>");
        foreach (var (test, exec, r) in entries)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"    <UnitTest name=\"{X(TestName(r))}\" storage=\"idempotency.chaos.dll\" id=\"{test}\">");
            sb.AppendLine(CultureInfo.InvariantCulture, $"      <Execution id=\"{exec}\" />");
            sb.AppendLine(CultureInfo.InvariantCulture, $"      <TestMethod codeBase=\"Idempotency.Chaos.dll\" adapterTypeName=\"executor://idempotency-chaos\" className=\"Idempotency.Chaos.Scenarios\" name=\"{X(TestName(r))}\" />");
            sb.AppendLine("    </UnitTest>");
        }

        sb.AppendLine("  </TestDefinitions>");
        sb.AppendLine("  <TestEntries>");
        foreach (var (test, exec, _) in entries)
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"    <TestEntry testId=\"{test}\" executionId=\"{exec}\" testListId=\"{ListId}\" />");
        }

        sb.AppendLine("  </TestEntries>");
        sb.AppendLine("  <TestLists>");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    <TestList name=\"Results Not in a List\" id=\"{ListId}\" />");
        sb.AppendLine("    <TestList name=\"All Loaded Results\" id=\"19431567-8539-422a-85d7-44ee4e166bda\" />");
        sb.AppendLine("  </TestLists>");
        var passed = results.Count(r => r.Passed);
        var failed = results.Count - passed;
        sb.AppendLine(CultureInfo.InvariantCulture, $"  <ResultSummary outcome=\"{(failed == 0 ? "Completed" : "Failed")}\">");
        sb.AppendLine(CultureInfo.InvariantCulture, $"    <Counters total=\"{results.Count}\" executed=\"{results.Count}\" passed=\"{passed}\" failed=\"{failed}\" error=\"0\" timeout=\"0\" aborted=\"0\" inconclusive=\"0\" passedButRunAborted=\"0\" notRunnable=\"0\" notExecuted=\"0\" disconnected=\"0\" warning=\"0\" completed=\"0\" inProgress=\"0\" pending=\"0\" />");
        sb.AppendLine("  </ResultSummary>");
        sb.AppendLine("</TestRun>");
        return sb.ToString();
    }

    private static string TestName(ScenarioResult r) => r.IsCheck
        ? $"Chaos_{r.Broker}_verdict_check_classifies_lost_unsettled_and_extra_keys_from_the_broker_state"
        : $"Chaos_{r.Broker}_{r.Store}_every_key_has_exactly_one_effect_and_poison_is_dead_lettered";

    private static string N(long n) => n.ToString(CultureInfo.InvariantCulture);
}
