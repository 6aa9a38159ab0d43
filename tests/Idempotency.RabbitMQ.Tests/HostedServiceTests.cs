using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Tests;

public sealed class HostedServiceTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Hosted_consumer_registered_through_di_applies_each_key_once_and_stops_with_the_host()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "di");
        var messages = Enumerable.Range(0, 100).Select(i => $"d-{i}").Concat(Enumerable.Range(0, 20).Select(i => $"d-{i}"))
            .Select(k => ((string?)k, Harness.Body(k))).ToList();
        await mq.PublishManyAsync(h.Queue, messages);
        await using var connection = await mq.CreateConnectionAsync("di");

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(connection);
        builder.Services.AddSingleton(new CreditHandler.Table(h.Table));
        builder.Services.AddIdempotency()
            .UseStore(_ => h.Store)
            .ConfigureHandler("di-orders")
            .AddRabbitMqConsumer<CreditHandler>("di-orders", o => h.Topology.ApplyTo(o).HandlerConcurrency = 2)
            .AddRabbitMqConsumer<CreditHandler>("di-orders", o => o.PrefetchCount = 30);
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        var service = Assert.Single(host.Services.GetServices<IHostedService>().OfType<IdempotentRabbitMqConsumerService>());
        var consumer = await service.Consumer.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 120, 30, "120 deliveries acknowledged");
        await host.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(100L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(0u, await mq.ConsumerCountAsync(h.Queue));
    }

    [Fact]
    public async Task Bad_consumer_options_stop_the_host_at_start_up_naming_the_setting()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemory.InMemoryIdempotencyStore())
            .AddRabbitMqConsumer<CreditHandler>("bad", o => { o.Queue = "q"; o.HandlerConcurrency = 16; o.PrefetchCount = 8; });
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("RabbitMQ consumer 'bad'", error.Message);
        Assert.Contains("PrefetchCount", error.Message);
    }

    public sealed class CreditHandler(CreditHandler.Table table) : IIdempotentMessageHandler
    {
        public async ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) =>
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table.Name} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET applied = {table.Name}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());

        public sealed record Table(string Name);
    }
}
