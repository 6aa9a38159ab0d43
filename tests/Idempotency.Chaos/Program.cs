// The chaos suite (./build.sh chaos): for each broker and store, produce messages with re-sent keys and poison,
// run the idempotent consumer as a child process under SIGKILLs and injected faults, then verify that every key has
// exactly one business effect, nothing is lost, and the DLQ holds exactly the poison messages. See docs/guarantees.md.
using System.Diagnostics;
using Idempotency.Chaos;

if (args.Length > 0 && args[0] == "--child")
{
    return await ChildHost.RunAsync(ChildArgs.Parse(args.Skip(1)));
}

ChaosOptions options;
try
{
    options = ChaosOptions.Parse(args);
}
catch (HelpRequestedException)
{
    Console.WriteLine(ChaosOptions.Usage);
    return 0;
}
catch (ArgumentException e)
{
    Console.Error.WriteLine("chaos: " + e.Message);
    Console.Error.WriteLine(ChaosOptions.Usage);
    return 2;
}

CpuHog? hog = null;
if (options.Soak)
{
    AppDomain.CurrentDomain.ProcessExit += (_, _) => ChildProcess.KillAll();
    return await Soak.RunAsync(options.SoakBrokerList, options.Messages, args.Contains("--results") ? options.ResultsDirectory : Path.Combine("benchmarks", "results"), options.SoakLimit);
}

AppDomain.CurrentDomain.ProcessExit += (_, _) => { ChildProcess.KillAll(); PrivateServer.KillAll(); hog?.Dispose(); };
Console.CancelKeyPress += (_, _) => { ChildProcess.KillAll(); PrivateServer.KillAll(); hog?.Dispose(); };
// `timeout` and CI runners stop the suite with SIGTERM: children, private servers and the CPU hog go with it (by
// PID), and so does the suite (without the exit it would carry on with the next scenario).
using var onSigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, _ =>
{
    ChildProcess.KillAll();
    PrivateServer.KillAll();
    hog?.Dispose();
    Console.Error.WriteLine("chaos: stopped by SIGTERM");
    Environment.Exit(143);
});

var start = DateTimeOffset.UtcNow;
var clock = Stopwatch.StartNew();
Console.WriteLine($"chaos: {(options.Quick ? "quick" : "full")} run, seed {options.Seed}, {options.Messages} messages / {options.Kills} kills / {options.Poison} poison per scenario; {options.Scenarios.Count} scenarios, {options.Parallel} at a time: {string.Join(" ", options.Scenarios.Select(s => s.Broker + "+" + s.Store))}");
var results = new List<ScenarioResult>();
using var reportGate = new SemaphoreSlim(1, 1);
if (options.UnderLoad)
{
    try
    {
        hog = CpuHog.Start(Environment.ProcessorCount, options.LoadBound);
    }
    catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception)
    {
        Console.Error.WriteLine("chaos: " + e.Message);
        return 2;
    }

    Console.WriteLine($"chaos: under load: {hog.Description}; load average {File.ReadAllText("/proc/loadavg").Trim()}");
}

try
{
    // Scenarios run side by side (the children mostly wait on kills, holds and faults), --parallel at a time, the
    // longest first: Kafka (a killed member's session must expire), then the RabbitMQ node crashes (node restarts). Before them, per broker, the verdict code is
    // checked against the broker (lost / unsettled / extra from the broker's own state; a private-node broker is
    // checked on the shared server, with the same code).
    var checkBrokers = options.Brokers.Select(b => b.StartsWith("rabbitmq", StringComparison.Ordinal) ? "rabbitmq" : b).Distinct().ToList();
    var jobs = checkBrokers.Select((b, i) => (Order: i - checkBrokers.Count, Run: (Func<Task<ScenarioResult>>)(async () =>
    {
        var check = await VerdictCheck.RunAsync(b);
        Console.WriteLine($"    {b} verdict check: {(check.Passed ? "PASS" : "FAIL: " + string.Join("; ", check.Violations))} in {check.Duration.TotalSeconds:0.0} s");
        return check;
    }))).Concat(options.Scenarios.Select((s, i) => (Order: i, Run: (Func<Task<ScenarioResult>>)(async () =>
    {
        Console.WriteLine($"==> {s.Broker} + {s.Store}");
        var result = await new Scenario(options, s.Broker, s.Store).RunAsync();
        Console.WriteLine($"    {result.Name}: {(result.Passed ? "PASS" : "FAIL")} in {result.Duration.TotalSeconds:0} s: kills {result.Kills} ({string.Join(", ", result.KillPoints.Select(k => $"{k.Key} {k.Value}"))}); faults {string.Join(", ", result.Faults.Select(k => $"{k.Key} {k.Value}"))}; load {result.LoadAverage}");
        foreach (var v in result.Violations)
        {
            Console.WriteLine($"    {result.Name}: VIOLATION: {v}");
        }

        return result;
    })))).ToList();
    var queue = new System.Collections.Concurrent.ConcurrentQueue<(int Order, Func<Task<ScenarioResult>> Run)>(
        jobs.Where(j => j.Order < 0).Concat(jobs.Where(j => j.Order >= 0).OrderBy(j => Rank(options.Scenarios[j.Order].Broker)).ThenBy(j => j.Order)));
    var done = new System.Collections.Concurrent.ConcurrentBag<(int Order, ScenarioResult Result)>();
    var workers = Enumerable.Range(0, Math.Min(options.Parallel, jobs.Count)).Select(_ => Task.Run(async () =>
    {
        while (queue.TryDequeue(out var job))
        {
            done.Add((job.Order, await job.Run()));
            // The report so far, after each scenario: a run stopped part-way still leaves what it found.
            await WritePartialAsync([.. done.OrderBy(d => d.Order).Select(d => d.Result)]);
        }
    })).ToList();
    await Task.WhenAll(workers);
    results.AddRange(done.OrderBy(d => d.Order).Select(d => d.Result));
}
finally
{
    ChildProcess.KillAll();
    if (hog is not null)
    {
        options.LoadSummary = $"{hog.Summary}; load average at the end {File.ReadAllText("/proc/loadavg").Trim()}";
        if (!hog.StillRunning)
        {
            Console.WriteLine("chaos: WARNING: the CPU hog stopped before the run ended (raise --load-seconds)");
        }

        hog.Dispose();
        Console.WriteLine($"chaos: {options.LoadSummary}; stopped");
    }
}

Console.WriteLine();
Console.WriteLine(Report.Table(results));
Directory.CreateDirectory(Path.Combine(options.ResultsDirectory, "test-results"));
await File.WriteAllTextAsync(Path.Combine(options.ResultsDirectory, "test-results", "chaos.trx"), Report.Trx(results, start, DateTimeOffset.UtcNow));
await File.WriteAllTextAsync(Path.Combine(options.ResultsDirectory, "chaos.md"), Report.Markdown(results, options, clock.Elapsed));
var scenarios = results.Where(r => !r.IsCheck).ToList();
var checks = results.Where(r => r.IsCheck).ToList();
var failed = results.Count(r => !r.Passed);
Console.WriteLine($"chaos: {scenarios.Count(r => r.Passed)} passed, {scenarios.Count(r => !r.Passed)} failed ({scenarios.Count(r => r.OnlyStalled)} of them stalls only); verdict checks {checks.Count(r => r.Passed)}/{checks.Count} in {clock.Elapsed.TotalSeconds:0} s (seed {options.Seed}); wrote {options.ResultsDirectory}/chaos.md and {options.ResultsDirectory}/test-results/chaos.trx");
return failed == 0 && scenarios.Count > 0 ? 0 : 1;

async Task WritePartialAsync(List<ScenarioResult> sofar)
{
    await reportGate.WaitAsync();
    try
    {
        Directory.CreateDirectory(options.ResultsDirectory);
        await File.WriteAllTextAsync(Path.Combine(options.ResultsDirectory, "chaos.md"), Report.Markdown(sofar, options, clock.Elapsed, partial: true));
    }
    finally
    {
        reportGate.Release();
    }
}

static int Rank(string broker) => broker == "kafka" ? 0 : broker.EndsWith("-crash", StringComparison.Ordinal) || broker.Contains("-crash-", StringComparison.Ordinal) ? 1 : 2;
