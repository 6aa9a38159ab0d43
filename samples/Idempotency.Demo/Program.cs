using Idempotency.Demo;
using Idempotency.Demo.Ledgers;
using Idempotency.Demo.Scenarios;
using Spectre.Console;

DemoSettings settings;
try
{
    settings = DemoSettings.Parse(args);
}
catch (HelpRequestedException)
{
    Console.WriteLine(DemoSettings.Usage);
    return 0;
}
catch (Exception e) when (e is ArgumentException or FormatException)
{
    Console.Error.WriteLine(e.Message);
    Console.Error.WriteLine(DemoSettings.Usage);
    return 2;
}

string Env(string name) => Environment.GetEnvironmentVariable(name) ?? string.Empty;
var required = new List<string>();
if (settings.Stores.Contains("postgres")) required.Add("IDEMPOTENCY_POSTGRES");
if (settings.Stores.Contains("redis")) required.Add("IDEMPOTENCY_REDIS");
if (settings.Brokers.Contains("rabbitmq")) required.Add("IDEMPOTENCY_RABBITMQ");
if (settings.Brokers.Contains("sqs")) required.Add("IDEMPOTENCY_SQS");
var missing = required.Where(v => string.IsNullOrEmpty(Env(v))).ToList();
if (missing.Count > 0)
{
    Console.Error.WriteLine($"{string.Join(", ", missing)} not set: run the demo with ./build.sh demo, which starts the services first.");
    return 2;
}

if (Console.IsOutputRedirected)
{
    // Logs and CI capture the table too: give it room instead of the 80-column default.
    AnsiConsole.Profile.Width = 200;
}

using var kafka = new KafkaScenario();
IDemoScenario[] scenarios = [new InProcessScenario(), kafka, new RabbitMqScenario(Env("IDEMPOTENCY_RABBITMQ")), new SqsScenario(Env("IDEMPOTENCY_SQS"))];
var workload = new Workload(settings.Messages, settings.DuplicateShare);
AnsiConsole.MarkupLine($"[bold]Idempotency demo[/]: {settings.Messages} messages per run, {workload.UniqueKeys} unique keys, {settings.Crashes} consumer crashes injected per run");
var rows = new List<DemoRow>();
using var cancellation = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; cancellation.Cancel(); };

await AnsiConsole.Progress()
    .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
    .StartAsync(async progress =>
    {
        foreach (var scenario in scenarios.Where(s => settings.Brokers.Contains(s.Broker)))
        {
            foreach (var storeName in settings.Stores)
            {
                var task = progress.AddTask($"{scenario.Broker} + {storeName}", maxValue: 1.0);
                var scenarioName = $"{scenario.Broker}_{storeName}_{RunId.Value}";
                await using IDemoLedger ledger = storeName switch
                {
                    "redis" => await RedisLedger.CreateAsync(Env("IDEMPOTENCY_REDIS"), scenarioName),
                    _ => await PostgresLedger.CreateAsync(Env("IDEMPOTENCY_POSTGRES"), scenarioName, cancellation.Token),
                };
                var row = await scenario.RunAsync(ledger, workload, settings.Crashes, fraction => task.Value = fraction, cancellation.Token);
                task.Value = 1.0;
                rows.Add(row);
            }
        }
    });

var table = new Table().Border(TableBorder.Rounded)
    .AddColumns("broker", "store", "produced", "unique", "delivered", "redeliveries", "duplicates skipped", "effects applied", "lost", "dead-lettered", "crashes", "msgs/s", "");
foreach (var row in rows)
{
    table.AddRow(row.Broker, row.Store, $"{row.Produced}", $"{row.Unique}", $"{row.Delivered}", $"{row.Redeliveries}", $"{row.DuplicatesSkipped}",
        $"{row.EffectsApplied}", $"{row.Lost}", $"{row.DeadLettered}", $"{row.Crashes}", $"{row.MessagesPerSecond:F0}", row.Ok ? "[green]ok[/]" : "[red]VIOLATION[/]");
}

AnsiConsole.Write(table);
var ok = rows.Count > 0 && rows.All(r => r.Ok);
AnsiConsole.MarkupLine(ok
    ? "[green]Every run: effects applied == unique messages, nothing lost.[/]"
    : "[red]A run broke the guarantee (effects != unique or lost > 0).[/]");
return ok ? 0 : 1;
