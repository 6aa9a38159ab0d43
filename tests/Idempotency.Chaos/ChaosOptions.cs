using System.Globalization;

namespace Idempotency.Chaos;

/// <summary>Command-line options of the orchestrator.</summary>
internal sealed class ChaosOptions
{
    public bool Quick { get; private set; }

    public IReadOnlyList<string> Brokers { get; private set; } = ["kafka", "rabbitmq", "sqs"];

    public IReadOnlyList<string> Stores { get; private set; } = ["postgres", "redis"];

    /// <summary>Messages produced per scenario (duplicates and poison included).</summary>
    public int Messages { get; private set; }

    /// <summary>SIGKILLs per scenario.</summary>
    public int Kills { get; private set; }

    /// <summary>Share of the produced messages that are re-sends of an earlier key.</summary>
    public double DuplicateShare { get; private set; } = 0.2;

    /// <summary>Poison messages per scenario (the handler always throws for them).</summary>
    public int Poison { get; private set; }

    public int Seed { get; private set; } = Environment.TickCount & 0x7FFFFFFF;

    /// <summary>Bound on each scenario's settle phase (after the last kill) before it counts as lost.</summary>
    public TimeSpan SettleTimeout { get; private set; }

    public string ResultsDirectory { get; private set; } = "artifacts";

    /// <summary>Run the soak (<see cref="Soak"/>) instead of the scenarios.</summary>
    public bool Soak { get; private set; }

    /// <summary>Upper bound on the soak run; it fails when the messages are not all processed by then.</summary>
    public TimeSpan SoakLimit { get; private set; } = TimeSpan.FromMinutes(60);

    /// <summary>Run the scenarios with stress-ng saturating every core (<see cref="CpuHog"/>).</summary>
    public bool UnderLoad { get; private set; }

    /// <summary>Upper bound on the CPU hog's life (it is stopped by PID when the run ends sooner).</summary>
    public TimeSpan LoadBound { get; private set; }

    /// <summary>Gets or sets what the CPU hog did, for the report (set at the end of an <c>--under-load</c> run).</summary>
    public string? LoadSummary { get; set; }

    /// <summary>Fault kinds not to inject (to isolate a failure).</summary>
    public IReadOnlyList<string> SkipFaults { get; private set; } = [];

    public static ChaosOptions Parse(string[] args)
    {
        var o = new ChaosOptions();
        int? messages = null, kills = null, poison = null, loadSeconds = null;
        for (var i = 0; i < args.Length; i++)
        {
            var a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--quick": o.Quick = true; break;
                case "--full": o.Quick = false; break;
                case "--broker": o.Brokers = List(Next(), ["kafka", "rabbitmq", "sqs", "sqs-fifo"], a); break;
                case "--store": o.Stores = List(Next(), ["postgres", "redis", "layered", "redis-lease", "redis-crash"], a); break;
                case "--messages": messages = Int(Next(), a, 10); break;
                case "--kills": kills = Int(Next(), a, 0); break;
                case "--poison": poison = Int(Next(), a, 0); break;
                case "--duplicates": o.DuplicateShare = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--under-load": o.UnderLoad = true; break;
                case "--soak": o.Soak = true; break;
                case "--soak-minutes": o.SoakLimit = TimeSpan.FromMinutes(Int(Next(), a, 1)); break;
                case "--load-seconds": loadSeconds = Int(Next(), a, 10); break;
                case "--seed": o.Seed = Int(Next(), a, 0); break;
                case "--results": o.ResultsDirectory = Next(); break;
                case "--skip-faults": o.SkipFaults = Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); break;
                case "-h" or "--help": throw new HelpRequestedException();
                default: throw new ArgumentException($"unknown option {a}");
            }
        }

        o.Messages = messages ?? (o.Soak ? 1_000_000 : o.Quick ? 600 : 4000);
        o.Kills = kills ?? (o.Quick ? 20 : 40);
        o.Poison = poison ?? (o.Quick ? 4 : 10);
        // Under load the settle bound doubles (it ends as soon as everything settled, so a healthy run loses no time).
        o.SettleTimeout = TimeSpan.FromSeconds((o.Quick ? 60 : 120) * (o.UnderLoad ? 2 : 1));
        o.LoadBound = TimeSpan.FromSeconds(loadSeconds ?? (o.Quick ? 1200 : 3600));
        if (o.DuplicateShare is < 0 or >= 1)
        {
            throw new ArgumentException("--duplicates must be in [0, 1)");
        }

        return o;
    }

    public const string Usage = """
        usage: dotnet run --project tests/Idempotency.Chaos -c Release -- [options]
          --quick             reduced run for CI (600 messages, 20 kills, 4 poison per scenario)
          --full              full run (default: 4000 messages, 40 kills, 10 poison per scenario)
          --broker LIST       kafka,rabbitmq,sqs,sqs-fifo (default: kafka,rabbitmq,sqs; sqs-fifo checks per-group
                              order from the business table with --store postgres or layered)
          --store LIST        postgres,redis,layered,redis-lease (default: postgres,redis; layered = Redis in front of
                              PostgreSQL; redis-lease = lease mode, the effect outside the store's transaction;
                              redis-crash = a private redis-server that is SIGKILLed and restarted)
          --messages N        messages produced per scenario (duplicates and poison included)
          --kills N           SIGKILLs of the consumer per scenario
          --poison N          poison messages per scenario
          --duplicates F      share of re-sent keys (default 0.2)
          --seed N            random seed (printed; re-run with it to repeat the schedule)
          --under-load        saturate every core with stress-ng (installed with apt-get when missing) while the
                              scenarios run; stopped by PID at the end
          --load-seconds N    upper bound on the CPU hog's life (default 1200 quick, 3600 full)
          --skip-faults LIST  fault kinds not to inject, e.g. kafka-request-errors,store-cut (to isolate a failure)
          --soak              not the scenarios: the soak run (./build.sh soak): --messages (default 1,000,000) unique
                              keys through Kafka over PostgreSQL with the retention pruner; writes soak.csv/.md/.png
                              to --results (default benchmarks/results); --soak-minutes N bounds it (default 60)
          --results DIR       where chaos.md and test-results/chaos.trx go (default: artifacts)
        """;

    private static List<string> List(string value, string[] allowed, string option)
    {
        var items = value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => s.ToLowerInvariant()).ToList();
        foreach (var item in items)
        {
            if (!allowed.Contains(item))
            {
                throw new ArgumentException($"{option}: unknown value '{item}' (allowed: {string.Join(", ", allowed)})");
            }
        }

        return items;
    }

    private static int Int(string value, string option, int min)
    {
        if (!int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) || n < min)
        {
            throw new ArgumentException($"{option} needs an integer >= {min} (was '{value}')");
        }

        return n;
    }
}

internal sealed class HelpRequestedException : Exception;
