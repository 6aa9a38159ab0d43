using System.Text;
using Dapper;
using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Npgsql;

namespace Idempotency.Postgres.Tests;

/// <summary><see cref="ClaimTiming.AtCommit"/> on the real server: the handler runs first, the key is inserted with the commit.</summary>
public sealed class ClaimAtCommitTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static IncomingMessage Message(string key, string body = "{\"amount\":5}", bool redelivered = false) =>
        new(key, Encoding.UTF8.GetBytes(body)) { Destination = "orders", Redelivered = redelivered, DeliveryAttempt = redelivered ? 2 : 1 };

    private static IdempotencyOptions AtCommit(string handler = "orders", PayloadMismatchPolicy policy = PayloadMismatchPolicy.TreatAsDuplicate) =>
        new() { HandlerName = handler, ClaimTiming = ClaimTiming.AtCommit, PayloadMismatchPolicy = policy };

    /// <summary>Adds to a business row in the store's transaction; a second run that committed would show as applied = 2.</summary>
    private static IIdempotentMessageHandler Credit(string table, Action? onRun = null, TimeSpan? hold = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            onRun?.Invoke();
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());
            if (hold is { } delay)
            {
                await Task.Delay(delay, ct);
            }
        });

    [Fact]
    public async Task New_message_commits_key_already_completed_and_effect_once()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), AtCommit());

        var result = await processor.ProcessAsync(Message("a-1"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, result.Outcome);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'a-1'"));
        Assert.Equal(1L, await db.ScalarAsync<long>(
            $"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = 'a-1' AND handler_name = 'orders' AND completed_at IS NOT NULL AND duration_ms IS NOT NULL AND expires_at > now() + interval '6 days'"));
    }

    [Fact]
    public async Task Duplicate_reaching_the_commit_rolls_back_the_handler_writes_and_is_a_duplicate()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, Credit(table, () => Interlocked.Increment(ref runs)), AtCommit());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("a-2"), TestContext.Current.CancellationToken)).Outcome);
        var duplicate = await processor.ProcessAsync(Message("a-2"), TestContext.Current.CancellationToken);

        // Not flagged as a redelivery and duplicates are rare so far: the handler ran optimistically, its write was undone.
        Assert.Equal(ProcessingOutcome.Duplicate, duplicate.Outcome);
        Assert.True(duplicate.IsCommitted);
        Assert.Equal(2, runs);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'a-2'"));
        Assert.Equal(5L, await db.ScalarAsync<long>($"SELECT amount FROM {table} WHERE id = 'a-2'"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = 'a-2'"));
    }

    [Fact]
    public async Task Redelivered_message_is_looked_up_first_and_never_runs_the_handler()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, Credit(table, () => Interlocked.Increment(ref runs)), AtCommit());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("a-3"), TestContext.Current.CancellationToken)).Outcome);
        var redelivery = await processor.ProcessAsync(Message("a-3", redelivered: true), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, redelivery.Outcome);
        Assert.Equal(1, runs);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'a-3'"));
    }

    [Fact]
    public async Task Replay_of_processed_keys_switches_to_looking_up_first_after_a_few_duplicates()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, Credit(table, () => Interlocked.Increment(ref runs)), AtCommit());
        const int Count = 100;
        for (var i = 0; i < Count; i++)
        {
            Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message($"r-{i}"), TestContext.Current.CancellationToken)).Outcome);
        }

        runs = 0;
        for (var i = 0; i < Count; i++)
        {
            Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message($"r-{i}"), TestContext.Current.CancellationToken)).Outcome);
        }

        // The moving average crosses a quarter after about ten duplicates; from then on duplicates cost one read.
        Assert.InRange(runs, 1, 15);
        Assert.Equal((long)Count, await db.ScalarAsync<long>($"SELECT sum(applied) FROM {table}"));

        // And new traffic brings it back to optimistic: a fresh key after a run of new keys is not looked up.
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("fresh"), TestContext.Current.CancellationToken)).Outcome);
    }

    [Fact]
    public async Task Handler_failing_because_its_business_row_exists_is_a_duplicate_not_a_failure()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();

        // A plain INSERT: running it again for the same order violates the business table's primary key.
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction())), AtCommit());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("order-9"), TestContext.Current.CancellationToken)).Outcome);
        var again = await processor.ProcessAsync(Message("order-9"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, again.Outcome);
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
    }

    [Fact]
    public async Task Handler_failure_records_nothing_and_is_a_failure()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1)", new { id = context.Key }, context.GetNpgsqlTransaction());
            throw new InvalidOperationException("handler failed on purpose");
        }), AtCommit());

        var result = await processor.ProcessAsync(Message("bad-1"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Failed, result.Outcome);
        Assert.IsType<InvalidOperationException>(result.Exception);
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }

    [Fact]
    public async Task Outbox_rows_of_a_duplicate_are_rolled_back_with_it()
    {
        var store = await db.CreateStoreAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
        {
            context.AddOutgoing(new OutboxMessage("accepted", context.Key, "{}"u8.ToArray()));
            return ValueTask.CompletedTask;
        }), AtCommit());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("o-1"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("o-1"), TestContext.Current.CancellationToken)).Outcome);

        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE message_key = 'o-1'"));
    }

    [Fact]
    public async Task Same_key_different_payload_found_at_commit_follows_the_mismatch_policy()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), AtCommit(policy: PayloadMismatchPolicy.Fail));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("p-1", "{\"amount\":5}"), TestContext.Current.CancellationToken)).Outcome);
        var changed = await processor.ProcessAsync(Message("p-1", "{\"amount\":6}"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.PayloadMismatch, changed.Outcome);
        Assert.IsType<PayloadMismatchException>(changed.Exception);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'p-1'"));
    }

    [Fact]
    public async Task Store_down_is_store_unavailable_and_nothing_is_written()
    {
        await using var proxied = db.ConnectThroughProxy();
        var setup = await db.CreateStoreAsync();
        var store = new PostgresIdempotencyStore(proxied.DataSource, setup.Options);
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), AtCommit());

        proxied.Proxy.Stop();
        NpgsqlConnection.ClearAllPools();
        var plain = await processor.ProcessAsync(Message("down-1"), TestContext.Current.CancellationToken);
        var redelivered = await processor.ProcessAsync(Message("down-2", redelivered: true), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, plain.Outcome);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, redelivered.Outcome);

        proxied.Proxy.Start();
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("down-1"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("down-2", redelivered: true), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(2L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(2L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }

    [Fact]
    public async Task Batches_still_claim_first_under_at_commit()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, Credit(table, () => Interlocked.Increment(ref runs)), AtCommit());

        var first = await processor.ProcessBatchAsync([Message("b-1"), Message("b-2")], TestContext.Current.CancellationToken);
        var second = await processor.ProcessBatchAsync([Message("b-1"), Message("b-2"), Message("b-3")], TestContext.Current.CancellationToken);

        Assert.All(first, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));
        Assert.Equal([ProcessingOutcome.Duplicate, ProcessingOutcome.Duplicate, ProcessingOutcome.Processed], second.Select(r => r.Outcome));
        Assert.Equal(3, runs);
        Assert.Equal(3L, await db.ScalarAsync<long>($"SELECT sum(applied) FROM {table}"));
    }
}
