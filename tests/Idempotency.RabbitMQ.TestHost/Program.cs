// Usage: Idempotency.RabbitMQ.TestHost <amqp-uri> <queue> <postgres-connection-string> <schema> <store-table> <business-table> <concurrency> <handler-delay-ms> <outbox-table>
// Consumes <queue> until killed, crediting one business row per new key in the store's transaction. Prints "ready" once subscribed.
using Dapper;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.RabbitMQ;
using Npgsql;
using RabbitMQ.Client;

var (uri, queue, postgres, schema, storeTable, businessTable) = (args[0], args[1], args[2], args[3], args[4], args[5]);
var concurrency = int.Parse(args[6], System.Globalization.CultureInfo.InvariantCulture);
var delay = TimeSpan.FromMilliseconds(int.Parse(args[7], System.Globalization.CultureInfo.InvariantCulture));

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
    HandlerConcurrency = concurrency,
    PrefetchCount = Math.Max(concurrency * 10, 20),
});
await consumer.StartAsync();
Console.WriteLine("ready");
Console.Out.Flush();

// Runs until killed, or until stdin closes (a graceful stop).
await Task.Run(() => Console.In.ReadToEnd());
await consumer.StopAsync();
