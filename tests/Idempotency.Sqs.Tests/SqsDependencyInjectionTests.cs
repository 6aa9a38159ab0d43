using System.Collections.Concurrent;
using Dapper;
using Idempotency.Delivery;
using Idempotency.Health;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsDependencyInjectionTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    public sealed record BusinessTable(string Name);

    public sealed class CreditHandler(BusinessTable table) : IIdempotentMessageHandler
    {
        public async ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) =>
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table.Name} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table.Name}.applied + 1",
                new { id = context.Key }, context.GetNpgsqlTransaction());
    }

    [Fact]
    public async Task AddSqsConsumer_runs_a_hosted_worker_with_a_scoped_handler_and_reports_health()
    {
        var queue = await sqs.CreateQueueAsync("di");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 5).Select(i => ($"{{\"i\":{i}}}", (string?)$"di-{i}")), ("{\"i\":0}", "di-0")]);

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(new BusinessTable(table));
        builder.Services.AddIdempotency()
            .UseStore(_ => store)
            .AddSqsConsumer<CreditHandler>("di-orders", o => { o.QueueUrl = queue; o.WaitTimeSeconds = 1; o.VisibilityTimeout = TimeSpan.FromSeconds(2); }, _ => sqs.CreateClient())
            .AddSqsConsumer<CreditHandler>("di-orders", o => o.Concurrency = 3, _ => sqs.CreateClient()); // twice: configuration only, still one worker
        using var host = builder.Build();

        await host.StartAsync(TestContext.Current.CancellationToken);
        await sqs.WaitProcessedAsync(queue, db, table, 5, Long);
        var services = host.Services.GetServices<IHostedService>().OfType<IdempotentSqsBackgroundService>().ToList();
        var health = host.Services.GetRequiredService<ConsumerHealthRegistry>().Consumers.Single(c => c.Name == "sqs:di-orders");
        Assert.Equal(ConsumerState.Running, health.State);
        await host.StopAsync(TestContext.Current.CancellationToken);

        var service = Assert.Single(services);
        Assert.Equal(3, service.Worker.Options.Concurrency);
        Assert.Equal(queue, service.Worker.Options.QueueUrl);
        Assert.Equal(6, service.Worker.Statistics.Deleted);
        Assert.Equal(ConsumerState.Stopped, health.State);
        Assert.Equal(5L, await db.AppliedAsync(table));
    }

    [Fact]
    public async Task Invalid_sqs_options_fail_host_start_naming_the_consumer_and_the_setting()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(new BusinessTable("unused"));
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemory.InMemoryIdempotencyStore())
            .AddSqsConsumer<CreditHandler>("bad", o => { o.QueueUrl = "http://127.0.0.1:4566/000000000000/q"; o.MaxMessages = 50; }, _ => sqs.CreateClient());
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("Consumer 'bad'", error.Message, StringComparison.Ordinal);
        Assert.Contains(nameof(SqsIdempotencyOptions.MaxMessages), error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Options_bound_from_configuration_drive_the_consumer_and_the_effects_are_exact()
    {
        var queue = await sqs.CreateQueueAsync("di-config");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 12).Select(i => ($"{{\"i\":{i}}}", (string?)$"cfg-{i}")), ("{\"i\":0}", "cfg-0"), ("{\"i\":1}", "cfg-1")]);
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Idempotency:Consumers:orders-cfg:QueueUrl"] = queue,
            ["Idempotency:Consumers:orders-cfg:Concurrency"] = "3",
            ["Idempotency:Consumers:orders-cfg:BatchSize"] = "5",
            ["Idempotency:Consumers:orders-cfg:WaitTimeSeconds"] = "1",
            ["Idempotency:Consumers:orders-cfg:VisibilityTimeout"] = "00:00:05",
            ["Idempotency:Consumers:orders-cfg:Handler:Retry:MaxAttempts"] = "7",
        }).Build();

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(new BusinessTable(table));
        builder.Services.AddIdempotency()
            .UseStore(_ => store)
            .AddSqsConsumer<CreditHandler>("orders-cfg", configuration.GetSection("Idempotency:Consumers:orders-cfg"), clientFactory: _ => sqs.CreateClient());
        using var host = builder.Build();

        await host.StartAsync(TestContext.Current.CancellationToken);
        await sqs.WaitProcessedAsync(queue, db, table, 12, Long);
        await host.StopAsync(TestContext.Current.CancellationToken);

        var worker = host.Services.GetServices<IHostedService>().OfType<IdempotentSqsBackgroundService>().Single().Worker;
        Assert.Equal(queue, worker.Options.QueueUrl);
        Assert.Equal(3, worker.Options.Concurrency);
        Assert.Equal(5, worker.Options.BatchSize);
        Assert.Equal(7, worker.Processor.Options.Retry.MaxAttempts);
        Assert.Equal(12L, await db.RowsAsync(table));
        Assert.Equal(12L, await db.AppliedAsync(table));
        Assert.Equal(14, worker.Statistics.Deleted);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task A_delivery_observer_registered_in_the_container_sees_every_settled_message_exactly_once()
    {
        var queue = await sqs.CreateQueueAsync("di-observer");
        var deadLetter = await sqs.CreateQueueAsync("di-observer-dlq");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 8).Select(i => ($"{{\"i\":{i}}}", (string?)$"obs-{i}")), ("{\"i\":2}", "obs-2"), ("{\"i\":3}", "obs-3"), ("{\"poison\":1}", "obs-poison")]);
        var observer = new RecordingObserver();

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(new BusinessTable(table));
        builder.Services.AddSingleton<IDeliveryObserver>(observer);
        builder.Services.AddIdempotency()
            .UseStore(_ => store)
            .ConfigureHandler("di-observer", o => o.Retry = new RetryOptions { MaxAttempts = 2, InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(200) })
            .AddSqsConsumer<PoisonAwareHandler>("di-observer", o =>
            {
                o.QueueUrl = queue;
                o.DeadLetterQueueUrl = deadLetter;
                o.WaitTimeSeconds = 1;
                o.VisibilityTimeout = TimeSpan.FromSeconds(2);
            }, _ => sqs.CreateClient());
        using var host = builder.Build();

        await host.StartAsync(TestContext.Current.CancellationToken);
        await sqs.WaitProcessedAsync(queue, db, table, 8, Long);
        await SqsFixture.WaitUntilAsync(async () => (await sqs.CountsAsync(deadLetter)).Visible == 1, Long, "the poison message dead-lettered");
        await host.StopAsync(TestContext.Current.CancellationToken);

        var all = observer.Observations.ToList();
        Assert.All(all, o => Assert.Equal(IdempotentSqsWorker.BrokerName, o.Broker));
        Assert.All(all, o => Assert.Equal("di-observer", o.Handler));
        var settled = all.Where(o => o.Settled).ToList();
        Assert.Equal(11, settled.Count);                                                                  // every message sent, once
        Assert.Equal(9, settled.Select(o => o.Key).Distinct().Count());
        Assert.Equal(8, settled.Count(o => o.Outcome == ProcessingOutcome.Processed));                    // == business rows
        Assert.Equal(2, settled.Count(o => o.Outcome == ProcessingOutcome.Duplicate));
        var dead = Assert.Single(settled, o => o.Action == DeliveryAction.DeadLetter);
        Assert.Equal("obs-poison", dead.Key);
        Assert.Equal(2, dead.Attempt);
        var retried = Assert.Single(all, o => o.Action == DeliveryAction.Retry);
        Assert.Equal(("obs-poison", 1, false), (retried.Key, retried.Attempt, retried.Settled));
        Assert.All(all.Where(o => !o.Settled && o.Action != DeliveryAction.Retry), o => Assert.Equal(DeliveryAction.RetryLater, o.Action));
        Assert.Equal(8L, await db.RowsAsync(table));
        Assert.Equal(8L, await db.AppliedAsync(table));
    }

    public sealed class PoisonAwareHandler(BusinessTable table) : IIdempotentMessageHandler
    {
        public async ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            if (context.Key == "obs-poison")
            {
                throw new InvalidOperationException("poison on purpose");
            }

            await new CreditHandler(table).HandleAsync(context, cancellationToken);
        }
    }

    private sealed class RecordingObserver : IDeliveryObserver
    {
        public ConcurrentQueue<DeliveryObservation> Observations { get; } = new();

        public void OnDelivered(DeliveryObservation delivery) => Observations.Enqueue(delivery);
    }
}
