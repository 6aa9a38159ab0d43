using Dapper;
using Idempotency.Health;
using Idempotency.Postgres;
using Idempotency.TestSupport;
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
            .AddSqsConsumer<CreditHandler>("di-orders", o => o.Pollers = 3, _ => sqs.CreateClient()); // twice: configuration only, still one worker
        using var host = builder.Build();

        await host.StartAsync(TestContext.Current.CancellationToken);
        await sqs.WaitProcessedAsync(queue, db, table, 5, Long);
        var services = host.Services.GetServices<IHostedService>().OfType<IdempotentSqsBackgroundService>().ToList();
        var health = host.Services.GetRequiredService<ConsumerHealthRegistry>().Consumers.Single(c => c.Name == "sqs:di-orders");
        Assert.Equal(ConsumerState.Running, health.State);
        await host.StopAsync(TestContext.Current.CancellationToken);

        var service = Assert.Single(services);
        Assert.Equal(3, service.Worker.Options.Pollers);
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
        Assert.Contains("SQS consumer 'bad'", error.Message, StringComparison.Ordinal);
        Assert.Contains(nameof(SqsIdempotencyOptions.MaxMessages), error.Message, StringComparison.Ordinal);
    }
}
