using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.Storage;
using Idempotency.Testing;
using Idempotency.TestSupport;

namespace Idempotency.Postgres.Tests;

public sealed record Payment(string Id, long Amount);

/// <summary>What a team adopting the library touches first: the testing kit on a real store, the Dapper helper, the schema script.</summary>
public sealed class AdoptionTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static IncomingMessage Message(string key) => new(key, Encoding.UTF8.GetBytes($$"""{"id":"{{key}}","amount":5}"""));

    [Fact]
    public async Task Typed_handler_writing_with_the_store_transaction_passes_every_redelivery_scenario_on_postgres()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var handler = IdempotentHandler.Create<Payment>(async (payment, context, ct) =>
        {
            var (connection, transaction) = context.Postgres();
            await connection.ExecuteAsync(new CommandDefinition(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@Id, @Amount, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
                payment, transaction, cancellationToken: ct));
        });

        var report = await new RedeliveryScenarioRunner(store, handler, Message,
                async (key, _) => await db.ScalarAsync<int>($"SELECT coalesce((SELECT applied FROM {table} WHERE id = @key), 0)", new { key }))
            .RunAsync(TestContext.Current.CancellationToken);

        report.AssertExactlyOnce();
        Assert.Equal(5, report.Results.Count);
    }

    [Fact]
    public async Task Handler_writing_on_its_own_connection_fails_the_failure_then_retry_scenario_on_postgres()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var handler = IdempotentHandler.Create<Payment>(async (payment, _, ct) =>
        {
            // The mistake the kit exists to catch: a write that does not join the store's transaction.
            await using var own = await db.DataSource.OpenConnectionAsync(ct);
            await own.ExecuteAsync($"INSERT INTO {table} (id, amount, applied) VALUES (@Id, @Amount, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1", payment);
        });

        var report = await new RedeliveryScenarioRunner(store, handler, Message,
                async (key, _) => await db.ScalarAsync<int>($"SELECT coalesce((SELECT applied FROM {table} WHERE id = @key), 0)", new { key }))
            {
                Scenarios = [RedeliveryScenario.DuplicateDelivery, RedeliveryScenario.FailureThenRetry],
            }
            .RunAsync(TestContext.Current.CancellationToken);

        Assert.True(report.Results[0].Passed, report.ToString());
        Assert.False(report.Results[1].Passed);
        Assert.Equal(2, report.Results[1].EffectCount);
    }

    [Fact]
    public async Task Static_schema_script_has_the_configured_names_and_runs_on_an_empty_schema_twice()
    {
        var options = new PostgresIdempotencyStoreOptions { Schema = db.Schema + "_m", Table = "inbox", OutboxTable = "outgoing", ConsumerPositionsTable = "offsets" };

        var script = PostgresIdempotencyStore.GetSchemaScript(options);

        Assert.DoesNotContain("{", script.Replace("'{", string.Empty, StringComparison.Ordinal), StringComparison.Ordinal);
        Assert.Contains($"CREATE TABLE IF NOT EXISTS {options.Schema}.inbox", script);
        Assert.Contains($"{options.Schema}.outgoing", script);
        Assert.Contains($"{options.Schema}.offsets", script);
        await using (var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken))
        {
            await connection.ExecuteAsync(script);
            await connection.ExecuteAsync(script);
        }

        var store = new PostgresIdempotencyStore(db.DataSource, options);
        var result = await new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "h" })
            .ProcessAsync(Message("k"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.Processed, result.Outcome);
        Assert.Equal(script, store.GetSchemaScript());
        Assert.Throws<ArgumentException>(() => PostgresIdempotencyStore.GetSchemaScript(new PostgresIdempotencyStoreOptions { Table = "x; DROP TABLE y" }));
    }

    [Fact]
    public async Task Forgetting_a_key_lets_its_redelivery_run_the_handler_again()
    {
        var store = await db.CreateStoreAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => { runs++; return ValueTask.CompletedTask; }), new IdempotencyOptions { HandlerName = "payments" });
        await processor.ProcessAsync(Message("p-1"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(Message("p-2"), TestContext.Current.CancellationToken);

        Assert.False(await store.ForgetKeyAsync("other-handler", "p-1", cancellationToken: TestContext.Current.CancellationToken));
        Assert.True(await store.ForgetKeyAsync("payments", "p-1", cancellationToken: TestContext.Current.CancellationToken));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("p-1"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("p-2"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(3, runs);
    }
}
