// A RabbitMQ consumer with exactly-once effects in PostgreSQL, as a newcomer writes it from the README:
// a typed handler class, configuration from appsettings.json, the store's schema applied on start.
//   dotnet run                 consume the queue
//   dotnet run -- --send 40    first publish 40 orders (a quarter of them twice, plus one malformed body), then consume
using System.Text.Json;
using Dapper;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.RabbitMQ;
using Npgsql;
using RabbitMQ.Client;

var builder = Host.CreateApplicationBuilder(args);
var queue = builder.Configuration["Newcomer:Queue"] ?? throw new InvalidOperationException("Newcomer:Queue is not set.");
var schema = builder.Configuration["Idempotency:Postgres:Schema"] ?? "idempotency";

var rabbit = await new ConnectionFactory { Uri = new Uri(builder.Configuration.GetConnectionString("rabbitmq")!) }.CreateConnectionAsync();
RabbitMqQueueTopology topology;
await using (var setup = await rabbit.CreateChannelAsync())
{
    topology = await RabbitMqTopology.DeclareAsync(setup, queue, RabbitMqQueueType.Classic);
}

// The business table the handler writes; a real service has it in its migrations.
await using (var db = NpgsqlDataSource.Create(builder.Configuration["Idempotency:Postgres:ConnectionString"]!))
{
    await db.CreateCommand($"CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {schema}.orders (id text PRIMARY KEY, total numeric NOT NULL, applied int NOT NULL DEFAULT 1)").ExecuteNonQueryAsync();
}

if (int.TryParse(builder.Configuration["send"], out var count))
{
    await Producer.SendAsync(rabbit, queue, count);
}

builder.Services.AddSingleton(rabbit);
builder.Services.AddIdempotency()
    .UsePostgres(builder.Configuration.GetSection("Idempotency:Postgres"))
    .ApplyPostgresSchemaOnStart()
    .AddRabbitMqConsumer<OrderPlacedHandler>("orders", builder.Configuration.GetSection("Idempotency:Consumers:orders"), o => topology.ApplyTo(o));

await builder.Build().RunAsync();

/// <summary>An order as producers publish it (JSON, camelCase).</summary>
public sealed record OrderPlaced(string Id, decimal Total);

/// <summary>Stores each order once: the insert joins the idempotency transaction, so it commits with the key or not at all.</summary>
public sealed class OrderPlacedHandler(IConfiguration configuration, ILogger<OrderPlacedHandler> logger) : JsonMessageHandler<OrderPlaced>
{
    protected override async ValueTask HandleAsync(OrderPlaced order, MessageContext context, CancellationToken cancellationToken)
    {
        var schema = configuration["Idempotency:Postgres:Schema"];
        var (connection, transaction) = context.Postgres();
        // "applied" counts how often the insert ran: the check expects exactly 1 per order.
        await connection.ExecuteAsync(new CommandDefinition(
            $"INSERT INTO {schema}.orders (id, total) VALUES (@Id, @Total) ON CONFLICT (id) DO UPDATE SET applied = orders.applied + 1",
            order, transaction, cancellationToken: cancellationToken));
        logger.LogInformation("Order {OrderId} stored", order.Id);
    }
}

/// <summary>Publishes test orders with MessageId = order id, which is where the RabbitMQ adapter takes the key from.</summary>
internal static class Producer
{
    public static async Task SendAsync(IConnection connection, string queue, int count)
    {
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        for (var i = 1; i <= count; i++)
        {
            var order = new OrderPlaced($"order-{i}", i * 1.5m);
            var body = JsonSerializer.SerializeToUtf8Bytes(order, JsonSerializerOptions.Web);
            var copies = i % 4 == 0 ? 2 : 1;   // every fourth order is published twice, as a producer retry would
            for (var copy = 0; copy < copies; copy++)
            {
                await Publish(channel, queue, order.Id, body);
            }
        }

        await Publish(channel, queue, "poison-1", "this is not json"u8.ToArray());
    }

    private static ValueTask Publish(IChannel channel, string queue, string messageId, byte[] body) =>
        channel.BasicPublishAsync(string.Empty, queue, mandatory: true, new BasicProperties { MessageId = messageId, Persistent = true }, body);
}
