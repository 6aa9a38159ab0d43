using System.Text;

namespace Idempotency.Demo;

/// <summary>The messages a scenario produces: unique keys plus re-sent copies (as a producer retry would send them).</summary>
internal sealed class Workload
{
    public Workload(int messages, double duplicateShare, int seed = 7)
    {
        var random = new Random(seed);
        var unique = Math.Max(1, (int)Math.Round(messages * (1 - duplicateShare)));
        var list = new List<(string Key, byte[] Body)>(messages);
        for (var i = 0; i < unique; i++)
        {
            list.Add(Make(i));
        }

        while (list.Count < messages)
        {
            list.Add(Make(random.Next(unique)));
        }

        // Copies arrive anywhere later in the stream, not just at the end.
        for (var i = list.Count - 1; i > 0; i--)
        {
            var j = random.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }

        Messages = list;
        UniqueKeys = unique;
    }

    public IReadOnlyList<(string Key, byte[] Body)> Messages { get; }

    public int UniqueKeys { get; }

    public long ExpectedTotal => Enumerable.Range(0, UniqueKeys).Sum(i => (long)Amount(i));

    public static int Amount(int i) => (i % 9) + 1;

    private static (string, byte[]) Make(int i) => ($"order-{i:D6}", Encoding.UTF8.GetBytes($"{{\"order\":{i},\"amount\":{Amount(i)}}}"));
}
