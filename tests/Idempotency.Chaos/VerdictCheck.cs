using System.Diagnostics;

namespace Idempotency.Chaos;

/// <summary>
/// Checks the verdict code against a real broker before the scenarios rely on it: one message acknowledged without an
/// effect (Kafka: the group's offset committed past it; RabbitMQ: acked; SQS: deleted) must come out <c>lost</c>, one
/// left on the broker <c>unsettled</c>, a key with two effects <c>extra</c>; and reading the broker must leave the
/// unsettled message where it was.
/// </summary>
internal static class VerdictCheck
{
    public static async Task<ScenarioResult> RunAsync(string broker)
    {
        var result = new ScenarioResult { Broker = broker, Store = "verdict-check", Started = DateTimeOffset.UtcNow, IsCheck = true };
        var clock = Stopwatch.StartNew();
        try
        {
            await using var rig = BrokerRig.Create(broker);
            await rig.SetupAsync($"{DateTime.UtcNow:HHmmss}_v{Random.Shared.Next():x8}");
            var lost = new ChaosMessage("k-lost", "ok:k-lost");
            var kept = new ChaosMessage("k-kept", "ok:k-kept");
            await rig.SimulateLossAsync(lost, kept);

            var effects = new Dictionary<string, long>(StringComparer.Ordinal) { ["k-extra"] = 2, ["k-once"] = 1 };
            var expected = new HashSet<string>(["k-lost", "k-kept", "k-extra", "k-once"], StringComparer.Ordinal);
            var none = new HashSet<string>(StringComparer.Ordinal);
            var missing = Verdict.Missing(effects, expected, none, none);
            Expect(result, string.Join(",", missing) == "k-kept,k-lost", $"missing keys are k-kept,k-lost (got {string.Join(",", missing)})");

            for (var pass = 1; pass <= 2; pass++)
            {
                // Twice: the first read must not have taken the unsettled message off the broker.
                var inspection = await rig.InspectAsync(missing);
                var verdicts = Verdict.Classify(effects, expected, none, none, inspection).ToDictionary(v => v.Key, StringComparer.Ordinal);
                result.Log.Add($"pass {pass}: {inspection.Summary}");
                result.Log.AddRange(verdicts.Values.Select(v => $"pass {pass}: {v}"));
                Expect(result, verdicts.Count == 3, $"pass {pass}: 3 verdicts (got {verdicts.Count}: {string.Join("; ", verdicts.Values)})");
                Expect(result, verdicts.GetValueOrDefault("k-lost")?.Kind == VerdictKind.Lost, $"pass {pass}: k-lost is lost (got {verdicts.GetValueOrDefault("k-lost")})");
                Expect(result, verdicts.GetValueOrDefault("k-kept")?.Kind == VerdictKind.Unsettled, $"pass {pass}: k-kept is unsettled (got {verdicts.GetValueOrDefault("k-kept")})");
                Expect(result, verdicts.GetValueOrDefault("k-extra")?.Kind == VerdictKind.Extra, $"pass {pass}: k-extra is extra (got {verdicts.GetValueOrDefault("k-extra")})");
            }
        }
        catch (Exception e)
        {
            result.Violations.Add($"verdict check error: {e.GetType().Name}: {e.Message}");
            result.Log.Add(e.ToString());
        }

        result.Duration = clock.Elapsed;
        return result;
    }

    private static void Expect(ScenarioResult result, bool condition, string what)
    {
        if (!condition)
        {
            result.Violations.Add("expected " + what);
        }
    }
}
