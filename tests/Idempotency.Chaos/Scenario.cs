using System.Diagnostics;
using System.Globalization;

namespace Idempotency.Chaos;

/// <summary>What one scenario (one broker over one store) did and found.</summary>
internal sealed class ScenarioResult
{
    public required string Broker { get; init; }

    public required string Store { get; init; }

    /// <summary>Gets a value indicating whether this is a verdict check (<see cref="VerdictCheck"/>), not a scenario.</summary>
    public bool IsCheck { get; init; }

    public int Produced { get; set; }

    public int Unique { get; set; }

    public int Poison { get; set; }

    public int Kills { get; set; }

    public SortedDictionary<string, int> KillPoints { get; } = new(StringComparer.Ordinal);

    public SortedDictionary<string, int> Faults { get; } = new(StringComparer.Ordinal);

    public int FaultCount => Faults.Values.Sum();

    /// <summary>Keys with a business effect.</summary>
    public int Effects { get; set; }

    /// <summary>Effects applied more than once (sum over keys of applied - 1).</summary>
    public long DuplicateEffects { get; set; }

    public int DuplicatesSkipped { get; set; }

    public int ProcessedReported { get; set; }

    /// <summary>Keys with no effect (or poison not dead-lettered) that the broker's position passed: gone for good.</summary>
    public int Lost { get; set; }

    /// <summary>Keys with no effect (or poison not dead-lettered) at the deadline that the broker still delivers: a stall.</summary>
    public int Unsettled { get; set; }

    /// <summary>The verdict of every key that did not end exactly right.</summary>
    public List<KeyVerdict> Verdicts { get; } = [];

    /// <summary>FIFO: how the per-group order check went.</summary>
    public string? OrderNote { get; set; }

    /// <summary>Redis lease mode: attempts, forced lease expiries and the extra effects they explain.</summary>
    public string? LeaseNote { get; set; }

    /// <summary>Redis everysec: acknowledged keys lost within the documented window before a server crash (allowed).</summary>
    public List<string> WindowLosses { get; } = [];

    /// <summary>Gets the SIGKILLs of a server (PostgreSQL, redis-server, a RabbitMQ node) the scenario injected.</summary>
    public int ServerCrashes => Faults.Where(f => f.Key.EndsWith("-crash", StringComparison.Ordinal)).Sum(f => f.Value);

    /// <summary>Consumer kills whose aimed point was reached (a hold, a first result, before any result at start-up).</summary>
    public int KillsLanded => KillPoints.Where(k => !k.Key.EndsWith("(idle)", StringComparison.Ordinal)).Sum(k => k.Value);

    /// <summary>The 1-minute load average when the scenario ended.</summary>
    public string LoadAverage { get; set; } = "";

    /// <summary>The broker's counters at the settle deadline, when the run did not settle in time.</summary>
    public string? DeadlineSnapshot { get; set; }

    /// <summary>Distinct keys in the dead-letter destination.</summary>
    public int DeadLettered { get; set; }

    /// <summary>Messages in the dead-letter destination (a poison message dead-lettered again after a kill counts twice).</summary>
    public int DeadLetterMessages { get; set; }

    public int Restarts { get; set; }

    public TimeSpan Duration { get; set; }

    public DateTimeOffset Started { get; set; }

    public List<string> Violations { get; } = [];

    public List<string> Log { get; } = [];

    public bool Passed => Violations.Count == 0;

    /// <summary>Gets a value indicating whether the only failures are keys still deliverable at the deadline (a stall, nothing lost).</summary>
    public bool OnlyStalled => !Passed && Verdicts.Count > 0 && Verdicts.All(v => v.Kind == VerdictKind.Unsettled) && Violations.Count == 1;

    public string Name => $"{Broker} + {Store}";
}

/// <summary>The machine's 1-minute load average, and how much longer than on a quiet machine a bound should be.</summary>
internal static class MachineLoad
{
    public static double Current => double.Parse(File.ReadAllText("/proc/loadavg").Split(' ')[0], CultureInfo.InvariantCulture);

    /// <summary>Load per core over 2, between 1 and 4 (2 cores at load 8: 2; at load 16 or more: 4).</summary>
    public static double Factor() => Math.Clamp(Current / Environment.ProcessorCount / 2, 1, 4);
}

/// <summary>Runs one scenario: produce, run the consumer child under SIGKILLs and faults, let it settle, verify.</summary>
internal sealed class Scenario(ChaosOptions options, string broker, string store)
{
    private static readonly string[] KillPointNames = ["startup", "random", "in-handler", "after-commit"];

    /// <summary>Redis lease mode adds a kill after a handler applied its effect and stalled past its lease.</summary>
    private static readonly string[] LeaseKillPointNames = [.. KillPointNames, "lease-expired"];

    public async Task<ScenarioResult> RunAsync()
    {
        var result = new ScenarioResult { Broker = broker, Store = store, Started = DateTimeOffset.UtcNow };
        var clock = Stopwatch.StartNew();
        // string.GetHashCode is randomized per process: derive the scenario seed from stable values.
        var seed = (options.Seed * 31 + Stable(broker) * 7 + Stable(store)) & 0x7FFFFFFF;
        var rng = new Random(seed);
        var runId = $"{DateTime.UtcNow:HHmmss}_{rng.Next():x8}";
        await using var brokerRig = BrokerRig.Create(broker);
        await using var storeRig = StoreRig.Create(store);
        ChildProcess? child = null;
        var journal = storeRig is RedisRig { IsLease: true } ? new LeaseJournal() : null;
        var effectTimes = new Dictionary<string, long>(StringComparer.Ordinal);
        try
        {
            await storeRig.SetupAsync(runId);
            await brokerRig.SetupAsync(runId);
            var messages = Generate(rng, result);
            // The producer keeps producing while the consumer is killed: a first chunk now, one more before each kill,
            // so every consumer life has fresh work (and re-sends still follow their originals).
            var chunks = messages.Chunk(Math.Max(1, (messages.Count + options.Kills) / (options.Kills + 1))).ToList();
            await brokerRig.ProduceAsync(chunks[0]);
            Note(result, $"producing {messages.Count} messages ({result.Unique} unique keys, {messages.Count - result.Unique - result.Poison} re-sends, {result.Poison} poison) in {chunks.Count} chunks");

            // A small handler delay keeps messages flowing through the whole kill phase, so holds have a handler to land in.
            var childArgs = new Dictionary<string, string>(StringComparer.Ordinal) { ["broker"] = broker, ["store"] = store, ["delay"] = "3" };
            storeRig.AddChildArgs(childArgs);
            brokerRig.AddChildArgs(childArgs);

            var faults = new List<FaultKind>
            {
                new("store-cut", async (r, ct) =>
                {
                    storeRig.Cut();
                    try { await Task.Delay(r.Next(800, 2500), ct); }
                    finally { storeRig.Restore(); }
                }),
            };
            faults.AddRange(storeRig.Faults);
            faults.AddRange(brokerRig.Faults);
            faults.RemoveAll(f => options.SkipFaults.Contains(f.Name));

            using var killPhase = new CancellationTokenSource();
            var faultTask = InjectFaultsAsync(faults, new Random(rng.Next()), result, killPhase.Token);
            var perKill = Math.Max(2, (result.Unique + result.Poison) / Math.Max(1, options.Kills));
            // A CPU-starved child starts (JIT, connections) seconds later: under load a kill point waits 10 s longer.
            // The same when the machine is busy without our CPU hog (other work: a load average above 4 per core).
            var killPointWait = brokerRig.KillPointWait + (options.UnderLoad || MachineLoad.Factor() > 2 ? TimeSpan.FromSeconds(10) : TimeSpan.Zero);
            for (var k = 0; k < options.Kills; k++)
            {
                if (k + 1 < chunks.Count)
                {
                    await brokerRig.ProduceAsync(chunks[k + 1]);
                }

                child = ChildProcess.Start(childArgs);
                result.Restarts++;
                var points = journal is null ? KillPointNames : LeaseKillPointNames;
                var point = k < points.Length ? points[k] : points[rng.Next(points.Length)];
                var lifetime = Stopwatch.StartNew();
                var landed = await ReachKillPointAsync(child, point, rng, perKill, killPointWait);
                child.Kill();
                result.Log.Add($"kill {k + 1}: {point}{(landed ? "" : " (idle)")} after {lifetime.ElapsedMilliseconds} ms, {child.Results} results (first at {child.FirstResultMs} ms)");
                Collect(result, child, effectTimes);
                journal?.AddLife(child.Journal, killed: true);
                child.Dispose();
                child = null;
                result.Kills++;
                var key = landed ? point : point + " (idle)";
                result.KillPoints[key] = result.KillPoints.GetValueOrDefault(key) + 1;
            }

            killPhase.Cancel();
            await faultTask;
            await brokerRig.EndFaultsAsync();
            Note(result, $"{result.Kills} kills in {clock.Elapsed.TotalSeconds:0} s");

            foreach (var rest in chunks.Skip(options.Kills + 1))
            {
                await brokerRig.ProduceAsync(rest);
            }

            // Settle: one last child runs without kills until every key has its effect and the DLQ its poison.
            child = ChildProcess.Start(childArgs);
            result.Restarts++;
            // The settle bound stretches with the machine's load (up to 4 times): it ends as soon as everything settled,
            // so it costs a healthy run nothing, and a consumer starved by other work is not called stalled too early.
            var settleTimeout = options.SettleTimeout * MachineLoad.Factor();
            var complete = await WaitCompleteAsync(storeRig, brokerRig, result, settleTimeout);
            if (complete)
            {
                // A little longer, so a stray redelivery after completion would show as a second effect.
                await Task.Delay(1500);
            }
            else
            {
                // Where the consumer waited: the broker's counters while it still runs.
                try
                {
                    result.DeadlineSnapshot = await brokerRig.SnapshotAsync();
                }
                catch (Exception e)
                {
                    result.DeadlineSnapshot = $"(could not read the broker: {e.GetType().Name}: {e.Message})";
                }

                Note(result, $"did not settle within {settleTimeout.TotalSeconds:0} s (load average {MachineLoad.Current:0.0}); broker at the deadline: {result.DeadlineSnapshot}; child stderr tail:{Environment.NewLine}{child.StderrTail}");
            }

            await child.StopAsync(TimeSpan.FromSeconds(15));
            Collect(result, child, effectTimes);
            journal?.AddLife(child.Journal, killed: false);
            child.Dispose();
            child = null;

            if (brokerRig.Diagnostics.Length > 0)
            {
                Note(result, brokerRig.Diagnostics);
            }

            await VerifyAsync(storeRig, brokerRig, messages, result, journal, effectTimes);
        }
        catch (Exception e)
        {
            result.Violations.Add($"scenario error: {e.GetType().Name}: {e.Message}");
            Note(result, e.ToString());
        }
        finally
        {
            child?.Dispose();
        }

        result.Duration = clock.Elapsed;
        result.LoadAverage = File.ReadAllText("/proc/loadavg").Split(' ')[0];
        return result;
    }

    private static int Stable(string s)
    {
        var h = 17;
        foreach (var c in s)
        {
            h = unchecked(h * 31 + c);
        }

        return h & 0x7FFFFFF;
    }

    private List<ChaosMessage> Generate(Random rng, ScenarioResult result)
    {
        var poison = Math.Min(options.Poison, options.Messages / 10);
        var resends = (int)Math.Round(options.Messages * options.DuplicateShare);
        var unique = options.Messages - resends - poison;
        var messages = new List<ChaosMessage>(options.Messages);
        for (var i = 0; i < unique; i++)
        {
            var key = $"k-{i:D6}";
            messages.Add(new ChaosMessage(key, "ok:" + key));
        }

        for (var i = 0; i < poison; i++)
        {
            messages.Insert(rng.Next(messages.Count + 1), new ChaosMessage($"p-{i:D4}", $"poison:p-{i:D4}"));
        }

        // Producer re-sends: a copy of an earlier ordinary message, placed after the original.
        for (var i = 0; i < resends; i++)
        {
            int at;
            ChaosMessage original;
            do
            {
                at = rng.Next(messages.Count);
                original = messages[at];
            }
            while (original.IsPoison);

            messages.Insert(rng.Next(at + 1, messages.Count + 1), original);
        }

        result.Produced = messages.Count;
        result.Unique = unique;
        result.Poison = poison;
        return messages;
    }

    private static async Task<bool> ReachKillPointAsync(ChildProcess child, string point, Random rng, int perKill, TimeSpan wait)
    {
        switch (point)
        {
            case "startup":
                // Before any handler ran: during start-up, connect, group join or the first fetch.
                await Task.Delay(rng.Next(100, 900));
                return child.Results == 0;
            case "random":
                // Anywhere while messages flow: between messages, in a claim, a commit, an ack or an offset commit.
                await child.WaitForResultsAsync(1, wait);
                await Task.Delay(rng.Next(0, 1200));
                return child.Results > 0 && !child.HasExited;
            case "in-handler":
                // Armed at once: the child holds in its N-th handler call (with a batch, mid-batch).
                child.Send($"hold-handler {rng.Next(1, (perKill / 2) + 2)}");
                return await child.WaitForEventAsync("H", wait);
            case "lease-expired":
                // Lease mode: the N-th handler applies its effect and stalls past its 2 s lease; the kill comes after the
                // lease expired, so the redelivery runs the handler (and the effect) again: the at-least-once window.
                child.Send($"stall-lease {rng.Next(1, 3)}");
                if (!await child.WaitForEventAsync("S", wait))
                {
                    return false;
                }

                await Task.Delay(TimeSpan.FromMilliseconds(2300));
                return !child.HasExited;
            default:
                child.Send($"hold-commit {rng.Next(1, (perKill / 2) + 2)}");
                return await child.WaitForEventAsync("C", wait);
        }
    }

    private static async Task InjectFaultsAsync(List<FaultKind> faults, Random rng, ScenarioResult result, CancellationToken killPhase)
    {
        // Round-robin over the fault kinds at random intervals while the kills go on; the first round always completes.
        for (var i = 0; ; i++)
        {
            if (faults.Count == 0 || (i >= faults.Count && killPhase.IsCancellationRequested))
            {
                return;
            }

            try
            {
                await Task.Delay(rng.Next(500, 2500), i < faults.Count ? CancellationToken.None : killPhase);
            }
            catch (OperationCanceledException)
            {
                return;
            }

            var fault = faults[i % faults.Count];
            await fault.InjectAsync(rng, CancellationToken.None);
            lock (result)
            {
                result.Faults[fault.Name] = result.Faults.GetValueOrDefault(fault.Name) + 1;
            }
        }
    }

    private static async Task<bool> WaitCompleteAsync(StoreRig store, BrokerRig broker, ScenarioResult result, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < timeout)
        {
            await Task.Delay(1000);
            var effects = await store.ReadEffectsAsync();
            if (effects.Count(e => e.Key.StartsWith("k-", StringComparison.Ordinal)) < result.Unique)
            {
                continue;
            }

            var dlq = await broker.ReadDeadLettersAsync();
            if (dlq.Distinct().Count() >= result.Poison)
            {
                return true;
            }
        }

        return false;
    }

    private static void Collect(ScenarioResult result, ChildProcess child, Dictionary<string, long> effectTimes)
    {
        result.DuplicatesSkipped += child.Duplicates;
        result.ProcessedReported += child.Processed;
        foreach (var (key, at) in child.EffectTimes)
        {
            effectTimes[key] = Math.Max(effectTimes.GetValueOrDefault(key), at);
        }
    }

    private static async Task VerifyAsync(StoreRig store, BrokerRig broker, List<ChaosMessage> messages, ScenarioResult result, LeaseJournal? journal, Dictionary<string, long> effectTimes)
    {
        var effects = await store.ReadEffectsAsync();
        var dlq = await broker.ReadDeadLettersAsync();
        var expected = messages.Where(m => !m.IsPoison).Select(m => m.Key).ToHashSet(StringComparer.Ordinal);
        var poison = messages.Where(m => m.IsPoison).Select(m => m.Key).ToHashSet(StringComparer.Ordinal);
        var dlqKeys = dlq.ToHashSet(StringComparer.Ordinal);

        result.Effects = effects.Count(e => e.Value > 0);
        result.DuplicateEffects = effects.Values.Where(v => v > 1).Sum(v => v - 1);
        result.DeadLettered = dlqKeys.Count;
        result.DeadLetterMessages = dlq.Count;

        // Every missing key gets a verdict from the broker's own state: lost (its position passed it) or unsettled.
        var missing = Verdict.Missing(effects, expected, poison, dlqKeys);
        var inspection = missing.Count > 0 ? await broker.InspectAsync(missing) : new BrokerInspection(new Dictionary<string, KeyPosition>(), "");
        if (missing.Count > 0)
        {
            Note(result, $"{missing.Count} keys missing; broker after the run: {inspection.Summary}");
        }

        result.Verdicts.AddRange(Verdict.Classify(effects, expected, poison, dlqKeys, inspection));
        if (journal is not null)
        {
            // Lease mode: an extra effect is allowed exactly where an attempt applied it and did not complete.
            var lease = journal.Analyze(effects);
            result.Verdicts.RemoveAll(v => v.Kind == VerdictKind.Extra && lease.ExplainedExtraKeys.Contains(v.Key));
            result.Violations.AddRange(lease.Violations);
            result.LeaseNote = $"{lease.Attempts} handler attempts; {lease.ForcedExpiries} forced lease expiries (effect applied, stalled past the lease, killed); {lease.ExtraEffects} extra effects, all from attempts that did not complete: {lease.ExtraAfterForcedExpiry} after a forced expiry, {lease.ExtraAfterKill} after another kill, {lease.ExtraAfterFailedCompletion} after a failed or refused completion";
            if (lease.Violations.Count > 0)
            {
                result.LeaseNote = result.LeaseNote.Replace("all from attempts that did not complete", "NOT all explained", StringComparison.Ordinal);
            }

            Note(result, "lease mode: " + result.LeaseNote);
        }

        if (store.CrashLossWindow is { } window)
        {
            // appendfsync everysec: a key lost is allowed only when its write reached Redis within the window before a
            // crash (docs/guarantees.md); any other lost key is a violation as everywhere else.
            foreach (var v in result.Verdicts.Where(v => v.Kind == VerdictKind.Lost).ToList())
            {
                if (effectTimes.TryGetValue(v.Key, out var at) && window.SecondsBeforeCrash(at) is { } before)
                {
                    result.Verdicts.Remove(v);
                    result.WindowLosses.Add(string.Create(CultureInfo.InvariantCulture, $"{v.Key} (written {before:0.00} s before a crash)"));
                }
            }

            Note(result, $"appendfsync everysec: {window.Crashes.Count} crashes; {result.WindowLosses.Count} acknowledged keys lost within {window.Before.TotalSeconds:0} s before a crash (allowed){(result.WindowLosses.Count > 0 ? ": " + string.Join(", ", result.WindowLosses.Take(20)) : "")}");
        }

        result.Lost = result.Verdicts.Count(v => v.Kind == VerdictKind.Lost);
        result.Unsettled = result.Verdicts.Count(v => v.Kind == VerdictKind.Unsettled);
        result.Violations.AddRange(Verdict.Violations(result.Verdicts, result.DeadlineSnapshot));

        foreach (var v in result.Verdicts)
        {
            result.Log.Add("verdict: " + v);
        }

        await CheckOrderAsync(store, broker, messages, result);

        var wrongDlq = dlqKeys.Where(k => !poison.Contains(k)).Take(10).ToList();
        if (wrongDlq.Count > 0)
        {
            result.Violations.Add($"the DLQ holds messages that are not poison: {string.Join(", ", wrongDlq.Select(k => k.Length == 0 ? "(an entry without a key)" : k))}");
        }

        if (result.Kills < 1 && result.FaultCount < 1)
        {
            result.Violations.Add("nothing was injected");
        }
    }

    private static async Task CheckOrderAsync(StoreRig store, BrokerRig broker, List<ChaosMessage> messages, ScenarioResult result)
    {
        // FIFO: within each group, keys must get their first effect in the order they were first produced.
        if (broker.OrderGroup("k-000000") is null)
        {
            return;
        }

        var order = await store.ReadFirstEffectOrderAsync();
        if (order is null)
        {
            Note(result, $"order not checked: the {store.Name} store keeps no effect order (use --store postgres or layered)");
            return;
        }

        var groups = messages.Where(m => !m.IsPoison).Select(m => m.Key).Distinct(StringComparer.Ordinal).GroupBy(k => broker.OrderGroup(k)!, StringComparer.Ordinal);
        var checkedGroups = 0;
        foreach (var group in groups)
        {
            var produced = group.Where(order.ContainsKey).ToList();
            var applied = produced.OrderBy(k => order[k]).ToList();
            var at = produced.Zip(applied).Select((p, i) => (p, i)).FirstOrDefault(x => x.p.First != x.p.Second);
            if (at.p.First is not null)
            {
                result.Violations.Add($"FIFO group {group.Key} out of order at position {at.i}: produced {at.p.First}, applied {at.p.Second} first (sequence {order[at.p.Second]} vs {order[at.p.First]})");
            }

            checkedGroups++;
        }

        result.OrderNote = $"{checkedGroups} FIFO groups checked in the business table: {(result.Violations.Any(v => v.StartsWith("FIFO group", StringComparison.Ordinal)) ? "OUT OF ORDER" : "each in produce order")}";
        Note(result, result.OrderNote);
    }

    private static void Note(ScenarioResult result, string line)
    {
        result.Log.Add(line);
        Console.Error.WriteLine($"    [{result.Name}] {line}");
    }
}
