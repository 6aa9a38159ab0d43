// Runs an IdempotentSqsWorker against real services until killed or until stdin closes.
// Environment: SQS_SERVICE_URL, SQS_QUEUE_URL, PG_CONNECTION, PG_SCHEMA, PG_STORE_TABLE, BUSINESS_TABLE,
// HANDLER_DELAY_MS (per message), VISIBILITY_SECONDS, BATCH ("1"/"0").
using Amazon.Runtime;
using Amazon.SQS;
using Dapper;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.Sqs;
using Npgsql;

static string Env(string name) => Environment.GetEnvironmentVariable(name) ?? throw new InvalidOperationException($"{name} is not set");

var serviceUrl = Environment.GetEnvironmentVariable("SQS_SERVICE_URL");
using IAmazonSQS sqs = string.IsNullOrEmpty(serviceUrl)
    ? new AmazonSQSClient()
    : new AmazonSQSClient(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = serviceUrl, AuthenticationRegion = "us-east-1" });
await using var dataSource = NpgsqlDataSource.Create(Env("PG_CONNECTION"));
var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = Env("PG_SCHEMA"), Table = Env("PG_STORE_TABLE"), OutboxTable = Env("PG_STORE_TABLE") + "_outbox" });
var table = Env("BUSINESS_TABLE");
var delay = int.Parse(Environment.GetEnvironmentVariable("HANDLER_DELAY_MS") ?? "0");
var handler = IdempotentHandler.Create(async (context, ct) =>
{
    if (delay > 0)
    {
        await Task.Delay(delay, ct);
    }

    await context.GetNpgsqlConnection().ExecuteAsync(
        $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
        new { id = context.Key }, context.GetNpgsqlTransaction());
});
var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "testhost" });
var worker = new IdempotentSqsWorker(sqs, processor, new SqsIdempotencyOptions
{
    QueueUrl = Env("SQS_QUEUE_URL"),
    WaitTimeSeconds = 1,
    Concurrency = 2,
    VisibilityTimeout = TimeSpan.FromSeconds(int.Parse(Environment.GetEnvironmentVariable("VISIBILITY_SECONDS") ?? "2")),
    BatchSize = Environment.GetEnvironmentVariable("BATCH") != "0" ? 10 : 1,
});

using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
_ = Task.Run(() => { Console.In.ReadToEnd(); stop.Cancel(); });
Console.WriteLine("ready");
await worker.RunAsync(stop.Token);
Console.WriteLine($"stopped {worker.Statistics}");
