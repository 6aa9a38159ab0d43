using Dapper;
using Idempotency.Health;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// A store that answers but is set up wrong (schema not created, wrong password) is not the messages' fault: nothing is
/// dead-lettered or acknowledged, health says unhealthy with the cause, and fixing it resumes processing by itself.
/// </summary>
public sealed class MisconfigurationTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    private const int Messages = 30;

    [Fact]
    public async Task Missing_schema_dead_letters_nothing_reports_unhealthy_and_resumes_once_created()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "misconf-schema");
        var store = new PostgresIdempotencyStore(db.DataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = "never_created_" + Guid.NewGuid().ToString("N")[..8] });

        await RunUntilFixedAsync(h, store, "does not exist", () => store.EnsureSchemaAsync());
    }

    [Fact]
    public async Task Wrong_password_dead_letters_nothing_reports_unhealthy_and_resumes_once_fixed()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "misconf-auth");
        var role = "misconf_" + Guid.NewGuid().ToString("N")[..8];
        await using (var admin = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
        {
            await admin.ExecuteAsync($"CREATE ROLE {role} LOGIN PASSWORD 'not-yet'");
            await admin.ExecuteAsync($"GRANT USAGE ON SCHEMA {db.Schema} TO {role}; GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {db.Schema} TO {role}");
        }

        try
        {
            var connection = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Username = role, Password = "right", Pooling = false };
            await using var dataSource = NpgsqlDataSource.Create(connection.ConnectionString);
            var store = new PostgresIdempotencyStore(dataSource, h.Store.Options);

            await RunUntilFixedAsync(h, store, "authentication failed", async () =>
            {
                await using var admin = await db.DataSource.OpenConnectionAsync();
                await admin.ExecuteAsync($"ALTER ROLE {role} PASSWORD 'right'");
            });
        }
        finally
        {
            await using var admin = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
            await admin.ExecuteAsync($"REVOKE ALL ON ALL TABLES IN SCHEMA {db.Schema} FROM {role}; REVOKE USAGE ON SCHEMA {db.Schema} FROM {role}; DROP ROLE {role}");
        }
    }

    private async Task RunUntilFixedAsync(Harness h, PostgresIdempotencyStore store, string cause, Func<Task> fix)
    {
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"m-{i}", Harness.Body($"m-{i}"))).ToList());
        var registry = new ConsumerHealthRegistry();
        var heartbeat = registry.Register("rabbitmq:misconf", TimeProvider.System);
        await using var connection = await mq.CreateConnectionAsync("misconf");
        var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, new IdempotentProcessor(store, h.Credit(), Harness.HandlerOptions(maxAttempts: 2)), h.Options(concurrency: 2));
        consumer.Health = heartbeat;
        await consumer.StartAsync();
        var health = new ConsumerHealthCheck(registry, TimeProvider.System, TimeSpan.FromMinutes(5));

        await Harness.WaitUntilAsync(() => heartbeat.State == ConsumerState.Misconfigured, 60, "the consumer reports a misconfigured store");
        var report = await health.CheckHealthAsync(new(), TestContext.Current.CancellationToken);
        Assert.Equal(Microsoft.Extensions.Diagnostics.HealthChecks.HealthStatus.Unhealthy, report.Status);
        Assert.Contains(cause, report.Description, StringComparison.Ordinal);

        // Far more than MaxAttempts (2) tries' worth of time: still nothing dead-lettered, acknowledged or applied.
        await Task.Delay(TimeSpan.FromSeconds(2), TestContext.Current.CancellationToken);
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(0, consumer.AcknowledgedCount);
        Assert.Equal(0, h.Runs);

        await fix();
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == Messages && consumer.AcknowledgedCount >= Messages, 90, $"{Messages} processed after the fix");
        await consumer.StopAsync();

        Assert.Equal(Messages, await h.AppliedAsync());
        Assert.Equal(1, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        Assert.Equal(ConsumerState.Stopped, heartbeat.State);
    }
}

/// <summary>Failures are judged by where they come from, not by an exception's type, and keys are exact.</summary>
public sealed class FailureOriginTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task A_handlers_own_downstream_timeout_spends_attempts_and_is_dead_lettered_while_the_store_answers()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "downstream");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 10).Select(i => (i == 4 ? "slow-downstream" : (string?)$"d-{i}", Harness.Body($"d-{i}"))).ToList());
        var runs = 0;
        var handler = h.Credit(before: (context, _) =>
        {
            if (context.Key == "slow-downstream")
            {
                Interlocked.Increment(ref runs);

                // What HttpClient throws when its own timeout fires: a TaskCanceledException over a TimeoutException.
                throw new TaskCanceledException("The request was canceled due to the configured HttpClient.Timeout", new TimeoutException("downstream"));
            }

            return Task.CompletedTask;
        });
        await using var connection = await mq.CreateConnectionAsync("downstream");
        var consumer = await h.StartAsync(connection, h.Processor(handler, Harness.HandlerOptions(maxAttempts: 3)), h.Options());

        await Harness.WaitUntilAsync(async () => await h.DeadLetteredAsync() == 1 && await h.RowsAsync() == 9, 60, "9 processed and the failing one dead-lettered");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(3, runs);
        Assert.False(consumer.IsPaused);
        Assert.Equal(9L, await h.AppliedAsync());
    }

    [Fact]
    public async Task Two_binary_key_headers_that_are_not_utf8_are_never_one_key()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "binkey");
        var properties = (byte[] key) => new global::RabbitMQ.Client.BasicProperties { Headers = new Dictionary<string, object?> { ["key"] = key } };
        foreach (var key in new byte[][] { [0xFF, 0x01], [0xFE, 0x01] })
        {
            await mq.Channel.BasicPublishAsync(string.Empty, h.Queue, mandatory: false, properties(key), Harness.Body("x"), TestContext.Current.CancellationToken);
        }

        await using var connection = await mq.CreateConnectionAsync("binkey");
        var options = h.Options();
        options.KeyHeader = "key";
        var consumer = await h.StartAsync(connection, h.Processor(h.Credit()), options);
        await Harness.WaitUntilAsync(async () => await h.DeadLetteredAsync() == 2, 60, "both refused as invalid keys");
        await consumer.StopAsync(TestContext.Current.CancellationToken);
        Assert.Equal(0L, await h.RowsAsync());

        foreach (var key in new byte[][] { [0xFF, 0x01], [0xFE, 0x01] })
        {
            await mq.Channel.BasicPublishAsync(string.Empty, h.Queue, mandatory: false, properties(key), Harness.Body("x"), TestContext.Current.CancellationToken);
        }

        options = h.Options();
        options.KeyHeader = "key";
        options.KeyBytesEncoding = KeyBytesEncoding.Hex;
        await using var hexConnection = await mq.CreateConnectionAsync("binkey-hex");
        var hex = await h.StartAsync(hexConnection, h.Processor(h.Credit(), Harness.HandlerOptions("orders-hex")), options);
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 2, 60, "two keys, two effects");
        await hex.StopAsync(TestContext.Current.CancellationToken);
        Assert.Equal(2L, await h.AppliedAsync());
    }
}
