// Usage (consumer mode): Idempotency.RabbitMQ.TestHost <amqp-uri> <queue> <postgres-connection-string> <schema> <store-table> <business-table> <concurrency> <handler-delay-ms> <outbox-table>
//   Consumes <queue> until killed, crediting one business row per new key in the store's transaction. Prints "ready" once subscribed.
// Usage (relay mode): Idempotency.RabbitMQ.TestHost relay <amqp-uri> <postgres-connection-string> <schema> <store-table> <outbox-table> <batch-size>
//   Runs a PostgresOutboxRelay with a RabbitMqOutboxPublisher until killed. Prints "ready" once started and
//   "published <n>" after each batch the broker confirmed. With IDEMPOTENCY_TESTHOST_HOLD_AFTER_PUBLISH=<k>, the k-th
//   batch is published (confirmed), then "holding <n>" is printed and the relay blocks BEFORE marking it sent, so the
//   test can SIGKILL it at exactly that point.
// Both modes stop gracefully when stdin closes.
using System.Globalization;
using Dapper;
using Idempotency;
using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.RabbitMQ;
using Idempotency.RabbitMQ.Outbox;
using Npgsql;
using RabbitMQ.Client;

if (args.Length > 0 && args[0] == "relay")
{
    return await RunRelayAsync(args[1..]);
}

var (uri, queue, postgres, schema, storeTable, businessTable) = (args[0], args[1], args[2], args[3], args[4], args[5]);
var concurrency = int.Parse(args[6], CultureInfo.InvariantCulture);
var delay = TimeSpan.FromMilliseconds(int.Parse(args[7], CultureInfo.InvariantCulture));

await using var dataSource = NpgsqlDataSource.Create(postgres);
var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = storeTable, OutboxTable = args[8] });
var handler = IdempotentHandler.Create(async (context, ct) =>
{
    if (delay > TimeSpan.Zero)
    {
        await Task.Delay(delay, ct);
    }

    await context.GetNpgsqlConnection().ExecuteAsync(
        $"INSERT INTO {businessTable} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {businessTable}.amount + 5, applied = {businessTable}.applied + 1",
        new { id = context.Key },
        context.GetNpgsqlTransaction());
});
var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "testhost" });
var factory = new ConnectionFactory { Uri = new Uri(uri), AutomaticRecoveryEnabled = true, ClientProvidedName = "testhost" };
await using var connection = await factory.CreateConnectionAsync();
await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, processor, new RabbitMqIdempotencyOptions
{
    Queue = queue,
    Concurrency = concurrency,
    PrefetchCount = Math.Max(concurrency * 10, 20),
});
await consumer.StartAsync();
Console.WriteLine("ready");
Console.Out.Flush();

// Runs until killed, or until stdin closes (a graceful stop).
await Task.Run(() => Console.In.ReadToEnd());
await consumer.StopAsync();
return 0;

static async Task<int> RunRelayAsync(string[] args)
{
    var (uri, postgres, schema, storeTable, outboxTable) = (args[0], args[1], args[2], args[3], args[4]);
    var batchSize = int.Parse(args[5], CultureInfo.InvariantCulture);
    var holdAt = int.TryParse(Environment.GetEnvironmentVariable("IDEMPOTENCY_TESTHOST_HOLD_AFTER_PUBLISH"), CultureInfo.InvariantCulture, out var k) ? k : 0;

    await using var dataSource = NpgsqlDataSource.Create(postgres);
    var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = storeTable, OutboxTable = outboxTable });
    var factory = new ConnectionFactory { Uri = new Uri(uri), AutomaticRecoveryEnabled = true, ClientProvidedName = "testhost-relay" };
    await using var connection = await factory.CreateConnectionAsync();
    await using var publisher = new RabbitMqOutboxPublisher(connection);
    var relay = new PostgresOutboxRelay(store, new AnnouncingPublisher(publisher, holdAt), new PostgresOutboxRelayOptions
    {
        BatchSize = batchSize,

        // One batch at a time: the test kills the process at an exact point (batch k published, not yet marked), and a
        // second worker would publish further batches meanwhile.
        Workers = 1,
        PollInterval = TimeSpan.FromMilliseconds(200),
        FailureBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(500) },
    });
    using var stop = new CancellationTokenSource();
    var run = relay.RunAsync(stop.Token);
    Console.WriteLine("ready");
    Console.Out.Flush();
    await Task.Run(() => Console.In.ReadToEnd());
    await stop.CancelAsync();
    await run;
    return 0;
}

/// <summary>Announces each confirmed batch on stdout; the <c>holdAt</c>-th one is held between publish and mark, forever.</summary>
internal sealed class AnnouncingPublisher(IOutboxPublisher inner, int holdAt) : IOutboxPublisher
{
    private int _batches;

    public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
    {
        await inner.PublishAsync(messages, cancellationToken);
        if (Interlocked.Increment(ref _batches) == holdAt)
        {
            Console.WriteLine($"holding {messages.Count}");
            Console.Out.Flush();
            await Task.Delay(Timeout.Infinite, CancellationToken.None);
        }

        Console.WriteLine($"published {messages.Count}");
        Console.Out.Flush();
    }
}
