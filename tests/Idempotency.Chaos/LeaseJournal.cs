namespace Idempotency.Chaos;

/// <summary>
/// Redis lease mode (external effects): checks the journal the children wrote against the effects. The mode promises
/// that a completed key never runs again and that only an attempt that did not complete (its worker killed or stalled
/// past its lease after the effect, or its completion refused or failed) can leave a second effect. So:
/// a key's handler starting after the key completed is a violation, and every effect beyond the first must be matched
/// by an earlier attempt of that key that started its effect and never completed. Forced lease expiries (<c>S</c>: a
/// handler stalled past its lease after its effect) are counted, and so are the extra effects they led to.
/// </summary>
internal sealed class LeaseJournal
{
    private readonly List<(IReadOnlyList<string> Lines, bool Killed)> _lives = [];

    public void AddLife(IEnumerable<string> lines, bool killed) => _lives.Add((lines.ToList(), killed));

    public sealed record Analysis(
        List<string> Violations,
        HashSet<string> ExplainedExtraKeys,
        int Attempts,
        int ForcedExpiries,
        int ExtraEffects,
        int ExtraAfterForcedExpiry,
        int ExtraAfterKill,
        int ExtraAfterFailedCompletion);

    public Analysis Analyze(IReadOnlyDictionary<string, long> effects)
    {
        var completed = new HashSet<string>(StringComparer.Ordinal);
        var unfinishedKilled = new Dictionary<string, int>(StringComparer.Ordinal);
        var unfinishedAlive = new Dictionary<string, int>(StringComparer.Ordinal);
        var stalled = new Dictionary<string, int>(StringComparer.Ordinal);
        var violations = new List<string>();
        var ranAgain = new List<string>();
        int attempts = 0, forced = 0;
        foreach (var (lines, killed) in _lives)
        {
            var started = new Dictionary<string, int>(StringComparer.Ordinal);
            var done = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var line in lines)
            {
                var key = line[2..];
                switch (line[0])
                {
                    case 'E':
                        attempts++;
                        if (completed.Contains(key))
                        {
                            ranAgain.Add(key);
                        }

                        started[key] = started.GetValueOrDefault(key) + 1;
                        break;
                    case 'K':
                        completed.Add(key);
                        done[key] = done.GetValueOrDefault(key) + 1;
                        break;
                    case 'S':
                        forced++;
                        stalled[key] = stalled.GetValueOrDefault(key) + 1;
                        break;
                }
            }

            foreach (var (key, n) in started)
            {
                var unfinished = n - done.GetValueOrDefault(key);
                if (unfinished > 0)
                {
                    var into = killed ? unfinishedKilled : unfinishedAlive;
                    into[key] = into.GetValueOrDefault(key) + unfinished;
                }
            }
        }

        if (ranAgain.Count > 0)
        {
            violations.Add($"{ranAgain.Count} handler runs of keys that had already completed (lease mode promises a completed key never runs again): {string.Join(", ", ranAgain.Distinct().Take(10))}");
        }

        var explained = new HashSet<string>(StringComparer.Ordinal);
        var unexplained = new List<string>();
        int extra = 0, afterForced = 0, afterKill = 0, afterFailed = 0;
        foreach (var (key, applied) in effects.Where(e => e.Value > 1))
        {
            var extraHere = (int)(applied - 1);
            extra += extraHere;
            var allowed = unfinishedKilled.GetValueOrDefault(key) + unfinishedAlive.GetValueOrDefault(key);
            if (extraHere > allowed)
            {
                unexplained.Add($"{key}x{applied} ({allowed} unfinished attempts)");
                continue;
            }

            explained.Add(key);
            if (stalled.ContainsKey(key))
            {
                afterForced += extraHere;
            }
            else if (unfinishedKilled.ContainsKey(key))
            {
                afterKill += extraHere;
            }
            else
            {
                afterFailed += extraHere;
            }
        }

        if (unexplained.Count > 0)
        {
            violations.Add($"{unexplained.Count} keys have more effects than attempts that did not complete (the lease let two workers run them): {string.Join(", ", unexplained.Take(10))}");
        }

        return new Analysis(violations, explained, attempts, forced, extra, afterForced, afterKill, afterFailed);
    }
}
