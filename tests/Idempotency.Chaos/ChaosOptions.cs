using System.Globalization;

namespace Idempotency.Chaos;

/// <summary>Command-line options of the orchestrator.</summary>
internal sealed class ChaosOptions
{
    public bool Quick { get; private set; }

    public static readonly string[] AllBrokers = ["kafka", "rabbitmq", "sqs", "sqs-fifo", "rabbitmq-crash", "rabbitmq-crash-classic"];

    public static readonly string[] AllStores = ["postgres", "redis", "layered", "redis-lease", "redis-crash", "redis-crash-everysec", "postgres-crash"];

    /// <summary>Gets the brokers of the scenarios (distinct, in order).</summary>
    public IReadOnlyList<string> Brokers => [.. Scenarios.Select(s => s.Broker).Distinct()];

    /// <summary>Gets the stores of the scenarios (distinct, in order).</summary>
    public IReadOnlyList<string> Stores => [.. Scenarios.Select(s => s.Store).Distinct()];

    /// <summary>Gets the scenarios to run: every broker with every store, plus (full run, no lists given) the RabbitMQ node crashes.</summary>
    public IReadOnlyList<(string Broker, string Store)> Scenarios { get; private set; } = [];

    /// <summary>Scenarios run at the same time (their children mostly wait on kills, holds and faults).</summary>
    public int Parallel { get; private set; }

    /// <summary>Gets the command that repeats this run (with its seed).</summary>
    public string Command { get; private set; } = "";

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

    /// <summary>Upper bound on each broker's soak; it fails when the messages are not all processed by then.</summary>
    public TimeSpan SoakLimit { get; private set; } = TimeSpan.FromMinutes(90);

    /// <summary>The brokers the soak runs, one after another.</summary>
    public static readonly string[] SoakBrokers = ["kafka", "rabbitmq", "sqs"];

    /// <summary>Gets the brokers of this soak run (<c>--broker</c>; all of <see cref="SoakBrokers"/> by default).</summary>
    public IReadOnlyList<string> SoakBrokerList { get; private set; } = SoakBrokers;

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
        int? messages = null, kills = null, poison = null, loadSeconds = null, parallel = null;
        IReadOnlyList<string>? brokers = null, stores = null;
        var seedGiven = false;
        for (var i = 0; i < args.Length; i++)
        {
            var a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{a} needs a value");
            switch (a)
            {
                case "--quick": o.Quick = true; break;
                case "--full": o.Quick = false; break;
                case "--broker": brokers = List(Next(), AllBrokers, a); break;
                case "--store": stores = List(Next(), AllStores, a); break;
                case "--parallel": parallel = Int(Next(), a, 1); break;
                case "--messages": messages = Int(Next(), a, 10); break;
                case "--kills": kills = Int(Next(), a, 0); break;
                case "--poison": poison = Int(Next(), a, 0); break;
                case "--duplicates": o.DuplicateShare = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--under-load": o.UnderLoad = true; break;
                case "--soak": o.Soak = true; break;
                case "--soak-minutes": o.SoakLimit = TimeSpan.FromMinutes(Int(Next(), a, 1)); break;
                case "--load-seconds": loadSeconds = Int(Next(), a, 10); break;
                case "--seed": o.Seed = Int(Next(), a, 0); seedGiven = true; break;
                case "--results": o.ResultsDirectory = Next(); break;
                case "--skip-faults": o.SkipFaults = Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries); break;
                case "-h" or "--help": throw new HelpRequestedException();
                default: throw new ArgumentException($"unknown option {a}");
            }
        }

        o.Messages = messages ?? (o.Soak ? 1_000_000 : o.Quick ? 600 : 2000);
        if (o.Soak && brokers is not null)
        {
            o.SoakBrokerList = brokers.Any(b => !SoakBrokers.Contains(b))
                ? throw new ArgumentException($"--soak --broker: one of {string.Join(", ", SoakBrokers)} (was '{string.Join(",", brokers)}')")
                : brokers.Distinct().ToList();
        }

        o.Kills = kills ?? (o.Quick ? 20 : 24);
        o.Poison = poison ?? (o.Quick ? 4 : 8);
        // Quick: the three default brokers over PostgreSQL and Redis. Full: every broker with every store mode (the
        // crash stores included), and the RabbitMQ node crashes (quorum and classic queues) over PostgreSQL and Redis.
        string[] defaultBrokers = o.Quick ? ["kafka", "rabbitmq", "sqs"] : ["kafka", "rabbitmq", "sqs", "sqs-fifo"];
        string[] defaultStores = o.Quick ? ["postgres", "redis"] : AllStores;
        var pairs = (brokers ?? defaultBrokers).SelectMany(b => (stores ?? defaultStores).Select(s => (b, s))).ToList();
        if (!o.Quick && brokers is null && stores is null)
        {
            // Real server crashes: the full run crashes a private RabbitMQ node (quorum and classic queues) over
            // PostgreSQL, Redis and a crashing private PostgreSQL. Not in --quick: on a busy machine the node restarts
            // made rabbitmq-crash x postgres-crash its longest scenario (731 s at load 75, against 618 s for Kafka).
            pairs.AddRange(new[] { "rabbitmq-crash", "rabbitmq-crash-classic" }.SelectMany(b => new[] { "postgres", "redis", "postgres-crash" }.Select(s => (b, s))));
        }

        o.Scenarios = pairs;
        o.Parallel = parallel ?? (o.Quick ? 4 : 6);
        o.Command = "./build.sh chaos " + string.Join(' ', args.Select(x => x.Contains(' ', StringComparison.Ordinal) ? $"'{x}'" : x)) + (seedGiven ? "" : $" --seed {o.Seed}");
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
          --quick             reduced run for CI (600 messages, 20 kills, 4 poison per scenario; kafka,rabbitmq,sqs x
                              postgres,redis; the crashes: --quick --broker rabbitmq-crash --store postgres-crash)
          --full              full run (default: 2000 messages, 24 kills, 8 poison per scenario; kafka,rabbitmq,sqs,
                              sqs-fifo x every store, and rabbitmq-crash,rabbitmq-crash-classic x postgres,redis,
                              postgres-crash)
          --broker LIST       kafka,rabbitmq,sqs,sqs-fifo,rabbitmq-crash,rabbitmq-crash-classic (sqs-fifo checks
                              per-group order from the business table with --store postgres, layered or postgres-crash;
                              rabbitmq-crash[-classic] = a private RabbitMQ node, quorum [classic] queues, SIGKILLed and
                              restarted while the consumer runs)
          --store LIST        postgres,redis,layered,redis-lease,redis-crash,redis-crash-everysec,postgres-crash
                              (layered = Redis in front of PostgreSQL; redis-lease = lease mode, the effect outside the
                              store's transaction; redis-crash = a private redis-server, appendfsync always, SIGKILLed
                              and restarted; redis-crash-everysec = the same with appendfsync everysec, where a key
                              acknowledged within 3 s before a crash may be lost; postgres-crash = a private PostgreSQL
                              cluster whose postmaster and backends are SIGKILLed and restarted with pg_ctl)
          --parallel N        scenarios run at the same time (default 4 quick, 6 full)
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
                              keys through each --broker (kafka,rabbitmq,sqs by default, one after another) with the
                              adapter's default options over PostgreSQL with the retention pruner; writes
                              soak-<broker>.csv/.md/.png and soak.md/.png to --results (default benchmarks/results);
                              --soak-minutes N bounds each broker (default 90)
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
