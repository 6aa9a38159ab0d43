using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Microsoft.Extensions.Configuration;
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
            .AddRabbitMqConsumer<CreditHandler>("di-orders", o => h.Topology.ApplyTo(o).Concurrency = 2)
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
            .AddRabbitMqConsumer<CreditHandler>("bad", o => { o.Queue = "q"; o.Concurrency = 16; o.PrefetchCount = 8; });
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("Consumer 'bad'", error.Message);
        Assert.Contains("PrefetchCount", error.Message);
    }

    [Fact]
    public async Task Consumer_options_bound_from_configuration_consume_with_the_bound_settings_and_apply_each_key_once()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "cfg");
        var messages = Enumerable.Range(0, 80).Select(i => $"c-{i}").Concat(Enumerable.Range(0, 20).Select(i => $"c-{i}"))
            .Select(k => ((string?)k, Harness.Body(k))).ToList();
        await mq.PublishManyAsync(h.Queue, messages);
        await using var connection = await mq.CreateConnectionAsync("cfg");

        // What an appsettings.json "Idempotency:Consumers:cfg-orders" section holds; the handler's options under "Handler".
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Idempotency:Consumers:cfg-orders:Queue"] = h.Queue,
            ["Idempotency:Consumers:cfg-orders:Concurrency"] = "3",
            ["Idempotency:Consumers:cfg-orders:PrefetchCount"] = "40",
            ["Idempotency:Consumers:cfg-orders:BatchSize"] = "10",
            ["Idempotency:Consumers:cfg-orders:DeadLetterExchange"] = h.Topology.DeadLetterExchange,
            ["Idempotency:Consumers:cfg-orders:Handler:Retry:MaxAttempts"] = "4",
        }).Build();
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(connection);
        builder.Services.AddSingleton(new CreditHandler.Table(h.Table));
        builder.Services.AddIdempotency()
            .UseStore(_ => h.Store)
            .AddRabbitMqConsumer<CreditHandler>("cfg-orders", configuration.GetSection("Idempotency:Consumers:cfg-orders"));
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        var service = Assert.Single(host.Services.GetServices<IHostedService>().OfType<IdempotentRabbitMqConsumerService>());
        var consumer = await service.Consumer.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 100, 60, "100 deliveries acknowledged");
        await host.StopAsync(TestContext.Current.CancellationToken);

        var bound = host.Services.GetRequiredService<IOptionsMonitor<RabbitMqIdempotencyOptions>>().Get("cfg-orders");
        Assert.Equal((h.Queue, 3, 40, 10), (bound.Queue, bound.Concurrency, bound.PrefetchCount, bound.BatchSize));
        Assert.Equal(4, consumer.Processor.Options.Retry.MaxAttempts);
        Assert.Equal("rabbitmq:cfg-orders", consumer.Name);
        Assert.Equal(80L, await h.RowsAsync());
        Assert.Equal(80L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        await consumer.Completion.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task A_ConfigureHandler_name_that_matches_no_consumer_fails_the_start_naming_both()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemory.InMemoryIdempotencyStore())
            .ConfigureHandler("order", o => o.Retry.MaxAttempts = 3)
            .AddRabbitMqConsumer<CreditHandler>("orders", o => o.Queue = "never-consumed");
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("ConfigureHandler(\"order\")", error.Message, StringComparison.Ordinal);
        Assert.Contains("'orders' (rabbitmq)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_name_taken_by_another_kind_of_consumer_is_refused_at_registration()
    {
        var services = new ServiceCollection();
        var builder = services.AddIdempotency().UseStore(_ => new InMemory.InMemoryIdempotencyStore()).AddIdempotentProcessor<CreditHandler>("orders");

        var error = Assert.Throws<InvalidOperationException>(() => builder.AddRabbitMqConsumer<CreditHandler>("orders", o => o.Queue = "q"));
        Assert.Contains("'orders'", error.Message, StringComparison.Ordinal);

        // The same name on the same broker adds configuration: still one consumer.
        builder.AddRabbitMqConsumer<CreditHandler>("other", o => o.Queue = "q").AddRabbitMqConsumer<CreditHandler>("other", o => o.PrefetchCount = 7);
        using var provider = services.BuildServiceProvider();
        Assert.Single(provider.GetServices<IHostedService>().OfType<IdempotentRabbitMqConsumerService>());
        Assert.Equal(7, provider.GetRequiredService<IOptionsMonitor<RabbitMqIdempotencyOptions>>().Get("other").PrefetchCount);
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
