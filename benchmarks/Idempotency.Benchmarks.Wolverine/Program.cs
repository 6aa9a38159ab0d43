// The peer of the RabbitMQ benchmark: Wolverine's durable inbox (PostgreSQL message storage) consuming a RabbitMQ queue,
// its handler doing the same business upsert as every other scenario inside the inbox transaction (EF Core with
// AutoApplyTransactions). Started by Idempotency.Benchmarks.RabbitMQ once per round:
//   dotnet Idempotency.Benchmarks.Wolverine.dll --queue Q --table schema.accounts_x --schema wolverine_x [--prefetch 200] [--concurrency 4]
// Prints "ready" once it listens, then runs until its standard input closes (or reads "stop"); prints
// "transactions-missing N" if a handler ran without the inbox transaction. The parent publishes and measures from SQL.
using System.Globalization;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Wolverine;
using Wolverine.EntityFrameworkCore;
using Wolverine.Postgresql;
using Wolverine.RabbitMQ;

var queue = Arg("--queue") ?? throw new ArgumentException("--queue is required");
var table = Arg("--table") ?? throw new ArgumentException("--table is required");
var schema = Arg("--schema") ?? throw new ArgumentException("--schema is required");
var prefetch = ushort.Parse(Arg("--prefetch") ?? "200", CultureInfo.InvariantCulture);
var concurrency = int.Parse(Arg("--concurrency") ?? "4", CultureInfo.InvariantCulture);
var postgres = Environment.GetEnvironmentVariable("IDEMPOTENCY_POSTGRES") ?? "Host=127.0.0.1;Port=5432;Username=app;Password=app;Database=appdb";
var rabbit = Environment.GetEnvironmentVariable("IDEMPOTENCY_RABBITMQ") ?? "amqp://guest:guest@127.0.0.1:5672/";
BenchDb.UpsertSql = $"INSERT INTO {table} (id, amount, applied) VALUES ({{0}}, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1";

var builder = Host.CreateApplicationBuilder();
builder.Logging.ClearProviders().AddConsole().SetMinimumLevel(LogLevel.Warning);
builder.Services.AddDbContextWithWolverineIntegration<BenchDb>(o => o.UseNpgsql(postgres));
builder.UseWolverine(opts =>
{
    opts.UseRuntimeCompilation();
    opts.Durability.Mode = DurabilityMode.Solo;
    opts.PersistMessagesWithPostgresql(postgres, schema);
    opts.UseEntityFrameworkCoreTransactions();
    opts.Policies.AutoApplyTransactions();
    opts.UseRabbitMq(new Uri(rabbit)).DisableDeadLetterQueueing(); // the queue is declared (and preloaded) by the benchmark
    opts.ListenToRabbitQueue(queue)
        .PreFetchCount(prefetch)
        .MaximumParallelMessages(concurrency)
        .DefaultIncomingMessage<Deposit>()
        .UseDurableInbox();
    opts.Discovery.IncludeType(typeof(DepositHandler));
});

using var host = builder.Build();
await host.StartAsync();
Console.WriteLine("ready");
while (Console.ReadLine() is { } line && line != "stop")
{
}

await host.StopAsync();
Console.WriteLine($"transactions-missing {DepositHandler.WithoutTransaction}");
return 0;

string? Arg(string name)
{
    var i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

/// <summary>The message every scenario publishes (JSON body); the row id is the RabbitMQ MessageId (a GUID).</summary>
public sealed record Deposit(string? Id, int Amount);

/// <summary>The EF Core context Wolverine enrolls in the inbox transaction.</summary>
public sealed class BenchDb(DbContextOptions<BenchDb> options) : DbContext(options)
{
    /// <summary>The business upsert (the same statement as every other scenario).</summary>
    public static string UpsertSql { get; set; } = "";
}

/// <summary>Applies a deposit: the business upsert on the EF Core connection, in Wolverine's transaction.</summary>
public static class DepositHandler
{
    private static int _withoutTransaction;

    /// <summary>Handlers that found no transaction on the DbContext (should stay 0).</summary>
    public static int WithoutTransaction => Volatile.Read(ref _withoutTransaction);

    /// <summary>Handles one deposit.</summary>
    public static async Task Handle(Deposit message, Envelope envelope, BenchDb db, CancellationToken cancellationToken)
    {
        if (db.Database.CurrentTransaction is null)
        {
            Interlocked.Increment(ref _withoutTransaction);
        }

        await db.Database.ExecuteSqlRawAsync(BenchDb.UpsertSql, [envelope.Id.ToString()], cancellationToken);
    }
}
