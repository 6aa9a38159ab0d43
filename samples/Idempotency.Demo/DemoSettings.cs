using System.Globalization;

namespace Idempotency.Demo;

/// <summary>Command-line settings of the demo.</summary>
internal sealed record DemoSettings(int Messages, double DuplicateShare, int Crashes, IReadOnlySet<string> Brokers, IReadOnlySet<string> Stores)
{
    public static readonly string[] AllBrokers = ["inprocess", "kafka", "rabbitmq", "sqs"];
    public static readonly string[] AllStores = ["postgres", "redis"];

    public static DemoSettings Parse(string[] args)
    {
        int messages = 2000, crashes = 4;
        double duplicates = 0.2;
        HashSet<string> brokers = [.. AllBrokers], stores = [.. AllStores];
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--messages" or "-n": messages = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--duplicates" or "-d": duplicates = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--crashes" or "-c": crashes = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--broker" or "-b": brokers = [.. Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)]; break;
                case "--store" or "-s": stores = [.. Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)]; break;
                case "--help" or "-h": throw new HelpRequestedException();
                default: throw new ArgumentException($"Unknown option {args[i]}.");
            }
        }

        if (messages < 1) throw new ArgumentException("--messages must be at least 1.");
        if (duplicates is < 0 or >= 1) throw new ArgumentException("--duplicates must be in [0, 1).");
        if (crashes < 0) throw new ArgumentException("--crashes must not be negative.");
        foreach (var b in brokers.Where(b => !AllBrokers.Contains(b))) throw new ArgumentException($"Unknown broker '{b}'; use {string.Join(", ", AllBrokers)}.");
        foreach (var s in stores.Where(s => !AllStores.Contains(s))) throw new ArgumentException($"Unknown store '{s}'; use {string.Join(", ", AllStores)}.");
        return new DemoSettings(messages, duplicates, crashes, brokers, stores);
    }

    public const string Usage = """
        usage: ./build.sh demo [--messages N] [--duplicates SHARE] [--crashes N] [--broker LIST] [--store LIST]
          --messages N        messages produced per run (default 2000), of which SHARE are re-sent copies
          --duplicates SHARE  share of produced messages that repeat an earlier key (default 0.2)
          --crashes N         consumer crashes injected per run (default 4): the consumer is killed abruptly
                              mid-handler and a fresh one started (inprocess: simulated redeliveries instead)
          --broker LIST       comma-separated, from inprocess,kafka,rabbitmq,sqs (default: all)
          --store LIST        comma-separated, from postgres,redis (default: all; redis = Redis-held state)
        environment: IDEMPOTENCY_POSTGRES, IDEMPOTENCY_REDIS, IDEMPOTENCY_RABBITMQ, IDEMPOTENCY_SQS (set by ./build.sh demo);
        Kafka runs on librdkafka's mock cluster inside the demo process.
        """;
}

internal sealed class HelpRequestedException : Exception;
