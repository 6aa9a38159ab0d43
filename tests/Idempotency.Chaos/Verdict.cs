using System.Globalization;

namespace Idempotency.Chaos;

/// <summary>Where a message of a key stands on the broker once the consumer stopped.</summary>
/// <param name="Deliverable">
/// The broker would still deliver it: Kafka, a copy at or after the group's committed offset of its partition;
/// RabbitMQ, still in the queue; SQS, still receivable (or possibly in flight).
/// </param>
/// <param name="Where">Where it is (or where the broker's position is), for the report.</param>
internal sealed record KeyPosition(bool Deliverable, string Where);

/// <summary>What the broker holds after the run: a position per asked key, and the broker's counters.</summary>
internal sealed record BrokerInspection(IReadOnlyDictionary<string, KeyPosition> Keys, string Summary)
{
    public KeyPosition this[string key] => Keys.TryGetValue(key, out var p) ? p : new KeyPosition(false, "not found on the broker");
}

/// <summary>
/// A documented window in which a server crash may lose acknowledged writes (Redis <c>appendfsync everysec</c>): a key
/// whose write reached the server from <paramref name="Before"/> before a crash to <paramref name="After"/> after it.
/// </summary>
/// <param name="Before">How long before a crash a write may be lost.</param>
/// <param name="After">Slack after the crash (the child's report of a write arrives a little after the write).</param>
/// <param name="Crashes">When the crashes happened (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>).</param>
internal sealed record LossWindow(TimeSpan Before, TimeSpan After, IReadOnlyList<long> Crashes)
{
    /// <summary>The crash whose window holds <paramref name="timestamp"/>, as seconds from the write to it; null when none.</summary>
    public double? SecondsBeforeCrash(long timestamp)
    {
        foreach (var crash in Crashes)
        {
            var before = System.Diagnostics.Stopwatch.GetElapsedTime(timestamp, crash);
            if (before <= Before && before >= -After)
            {
                return before.TotalSeconds;
            }
        }

        return null;
    }
}

internal enum VerdictKind
{
    /// <summary>No effect (or a poison message not dead-lettered) and the broker's position or ack passed it: gone for good.</summary>
    Lost,

    /// <summary>No effect yet, but the broker still delivers it: the consumer stalled before the deadline.</summary>
    Unsettled,

    /// <summary>More than one effect for one key.</summary>
    Extra,

    /// <summary>An effect for a key that must have none (poison, unknown).</summary>
    Unexpected,
}

/// <summary>The verdict for one key that is not exactly right.</summary>
internal sealed record KeyVerdict(string Key, VerdictKind Kind, string Detail)
{
    public override string ToString() => $"{Key}: {Kind.ToString().ToLowerInvariant()} ({Detail})";
}

/// <summary>
/// Classifies every key that did not end exactly right: <b>lost</b> (the broker's committed offset, ack or delete passed
/// it and it has no effect), <b>unsettled</b> (no effect, but still deliverable: a stall at the deadline, the report says
/// where it waited), <b>extra</b> (more than one effect), <b>unexpected</b> (an effect where none may be).
/// </summary>
internal static class Verdict
{
    /// <summary>Keys that are missing: ordinary keys without an effect, and poison keys not in the DLQ.</summary>
    public static List<string> Missing(IReadOnlyDictionary<string, long> effects, IReadOnlySet<string> expected, IReadOnlySet<string> poison, IReadOnlySet<string> dlq) =>
        expected.Where(k => effects.GetValueOrDefault(k) <= 0)
            .Concat(poison.Where(k => !dlq.Contains(k)))
            .Order(StringComparer.Ordinal)
            .ToList();

    public static List<KeyVerdict> Classify(
        IReadOnlyDictionary<string, long> effects,
        IReadOnlySet<string> expected,
        IReadOnlySet<string> poison,
        IReadOnlySet<string> dlq,
        BrokerInspection broker)
    {
        var verdicts = new List<KeyVerdict>();
        foreach (var key in Missing(effects, expected, poison, dlq))
        {
            var position = broker[key];
            var what = poison.Contains(key) ? "poison, not in the DLQ" : "no effect";
            verdicts.Add(position.Deliverable
                ? new KeyVerdict(key, VerdictKind.Unsettled, $"{what}; still deliverable: {position.Where}")
                : new KeyVerdict(key, VerdictKind.Lost, $"{what}; the broker passed it: {position.Where}"));
        }

        foreach (var (key, applied) in effects.OrderBy(e => e.Key, StringComparer.Ordinal))
        {
            if (applied > 1 && expected.Contains(key))
            {
                verdicts.Add(new KeyVerdict(key, VerdictKind.Extra, string.Create(CultureInfo.InvariantCulture, $"{applied} effects")));
            }
            else if (applied > 0 && !expected.Contains(key))
            {
                verdicts.Add(new KeyVerdict(key, VerdictKind.Unexpected, string.Create(CultureInfo.InvariantCulture, $"{applied} effects for a {(poison.Contains(key) ? "poison" : "unknown")} key")));
            }
        }

        return verdicts;
    }

    /// <summary>One violation line per kind, with up to <paramref name="show"/> keys each.</summary>
    /// <param name="verdicts">The verdicts.</param>
    /// <param name="deadline">The broker's counters at the settle deadline (where the consumer waited), if it did not settle.</param>
    /// <param name="show">Keys shown per kind.</param>
    public static IEnumerable<string> Violations(IReadOnlyList<KeyVerdict> verdicts, string? deadline = null, int show = 10)
    {
        foreach (var group in verdicts.GroupBy(v => v.Kind).OrderBy(g => g.Key))
        {
            var head = group.Key switch
            {
                VerdictKind.Lost => "lost (the broker passed them; no effect or no DLQ entry)",
                VerdictKind.Unsettled => "unsettled at the deadline (a stall: still deliverable, not lost)",
                VerdictKind.Extra => "more than one effect",
                _ => "effects for keys that must have none",
            };
            var where = group.Key == VerdictKind.Unsettled && deadline is not null ? $" | broker at the deadline: {deadline}" : "";
            yield return $"{group.Count()} keys {head}: {string.Join("; ", group.Take(show))}{(group.Count() > show ? "; ..." : "")}{where}";
        }
    }
}
