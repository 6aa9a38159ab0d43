using Idempotency.Postgres.Retention;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Microsoft.Extensions.Time.Testing;

namespace Idempotency.Postgres.Tests;

public sealed class RetentionTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Pruning_removes_only_expired_keys_in_bounded_batches()
    {
        var store = await db.CreateStoreAsync();
        var time = new FakeTimeProvider(new DateTimeOffset(2026, 1, 1, 0, 0, 0, TimeSpan.Zero));
        var options = new IdempotencyOptions { HandlerName = "retention", Retention = TimeSpan.FromDays(1) };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options, timeProvider: time);

        // 250 keys on day 0, then 100 keys on day 2 (they expire on day 3).
        await processor.ProcessBatchAsync(Enumerable.Range(0, 250).Select(i => new IncomingMessage($"old-{i}", "x"u8.ToArray())).ToList(), TestContext.Current.CancellationToken);
        time.Advance(TimeSpan.FromDays(2));
        await processor.ProcessBatchAsync(Enumerable.Range(0, 100).Select(i => new IncomingMessage($"new-{i}", "x"u8.ToArray())).ToList(), TestContext.Current.CancellationToken);

        var pruner = new PostgresRetentionPruner(store, new PostgresRetentionOptions { BatchSize = 40, PauseBetweenBatches = TimeSpan.Zero }, time);
        var deleted = await pruner.PruneOnceAsync(TestContext.Current.CancellationToken);

        Assert.Equal(250, deleted);
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key LIKE 'old-%'"));
        Assert.Equal(100L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key LIKE 'new-%'"));

        // A pruned key is new again: that is why retention must outlast the broker's redelivery window.
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(new IncomingMessage("old-1", "x"u8.ToArray()), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(new IncomingMessage("new-1", "x"u8.ToArray()), TestContext.Current.CancellationToken)).Outcome);
    }

    [Fact]
    public void Retention_shorter_than_the_broker_window_is_reported()
    {
        var options = new IdempotencyOptions { HandlerName = "orders", Retention = TimeSpan.FromDays(1) };

        Assert.Null(RetentionGuard.Check(options, TimeSpan.FromHours(12), "queue orders MessageRetentionPeriod"));
        Assert.Null(RetentionGuard.Check(options, null, "topic orders retention.ms=-1"));
        var warning = RetentionGuard.Check(options, TimeSpan.FromDays(4), "queue orders MessageRetentionPeriod");
        Assert.NotNull(warning);
        Assert.Contains("queue orders MessageRetentionPeriod", warning);
    }

    [Fact]
    public async Task Bad_retention_and_store_options_stop_the_host_naming_the_setting()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UsePostgres(o =>
            {
                o.ConnectionString = db.ConnectionString;
                o.Table = "bad-name";
            })
            .AddPostgresRetention(o => o.BatchSize = 0);
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<OptionsValidationException>(() => host.StartAsync(TestContext.Current.CancellationToken));
        Assert.Contains("Table must be a plain SQL identifier", error.Message);
    }

    [Fact]
    public async Task Host_with_postgres_store_applies_the_schema_and_prunes_on_start()
    {
        var table = "hosted_" + Guid.NewGuid().ToString("N")[..8];
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UsePostgres(o =>
            {
                o.ConnectionString = db.ConnectionString;
                o.Schema = db.Schema;
                o.Table = table;
            })
            .ApplyPostgresSchemaOnStart()
            .AddPostgresRetention(o => o.Interval = TimeSpan.FromHours(1))
            .ConfigureHandler("hosted");
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        var processor = host.Services.CreateIdempotentProcessor("hosted", IdempotentHandler.Create((_, _) => ValueTask.CompletedTask));
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(new IncomingMessage("k", "x"u8.ToArray()), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {db.Schema}.{table}"));
        await host.StopAsync(TestContext.Current.CancellationToken);
    }
}
