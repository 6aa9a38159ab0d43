using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;

namespace Idempotency.Postgres.Tests;

public sealed class PostgresPipelineTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static IncomingMessage Message(string? key, string body = "{\"amount\":5}") => new(key, Encoding.UTF8.GetBytes(body)) { Destination = "orders" };

    private static IdempotencyOptions Options(string handler = "orders", PayloadMismatchPolicy policy = PayloadMismatchPolicy.TreatAsDuplicate) =>
        new() { HandlerName = handler, PayloadMismatchPolicy = policy };

    /// <summary>A handler that adds the message's amount to a business row, in the store's transaction.</summary>
    private static IIdempotentMessageHandler Credit(string table, Func<MessageContext, bool>? fail = null, Action? onRun = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            onRun?.Invoke();
            if (fail?.Invoke(context) == true)
            {
                throw new InvalidOperationException("handler failed on purpose");
            }

            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());
        });

    [Fact]
    public async Task Same_message_delivered_twice_runs_handler_once_and_writes_one_row()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, Credit(table, onRun: () => Interlocked.Increment(ref runs)), Options());

        var first = await processor.ProcessAsync(Message("order-1"), TestContext.Current.CancellationToken);
        var second = await processor.ProcessAsync(Message("order-1"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, first.Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, second.Outcome);
        Assert.Equal(1, runs);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'order-1'"));
        // The claim wrote completed_at; with no stored result the commit does not write the key row again.
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = 'order-1' AND completed_at IS NOT NULL AND duration_ms IS NULL AND result IS NULL"));
    }

    [Fact]
    public async Task Stored_result_commits_with_the_key_and_comes_back_for_the_duplicate()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var credit = Credit(table);
        var handler = IdempotentHandler.Create(async (context, ct) =>
        {
            await credit.HandleAsync(context, ct);
            context.Result = "receipt-7"u8.ToArray();
        });
        var processor = new IdempotentProcessor(store, handler, Options());

        var first = await processor.ProcessAsync(Message("order-r"), TestContext.Current.CancellationToken);
        var second = await processor.ProcessAsync(Message("order-r"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, first.Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, second.Outcome);
        Assert.Equal("receipt-7", System.Text.Encoding.UTF8.GetString(second.StoredResult!.Value.Span));
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'order-r'"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = 'order-r' AND result = 'receipt-7'::bytea AND duration_ms IS NOT NULL"));
    }

    [Fact]
    public async Task Handler_throws_records_nothing_and_redelivery_runs_again()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var failNext = true;
        var processor = new IdempotentProcessor(store, Credit(table, fail: _ => failNext), Options());

        var failed = await processor.ProcessAsync(Message("order-2"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.Failed, failed.Outcome);
        Assert.IsType<InvalidOperationException>(failed.Exception);
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));

        failNext = false;
        var retried = await processor.ProcessAsync(Message("order-2"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.Processed, retried.Outcome);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'order-2'"));
    }

    [Fact]
    public async Task Commit_then_lost_ack_redelivery_is_duplicate_without_second_effect()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), Options());

        // The commit happens; the adapter "crashes" before acking, so the broker redelivers with the redelivered flag.
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("order-3"), TestContext.Current.CancellationToken)).Outcome);
        var redelivery = new IncomingMessage("order-3", Encoding.UTF8.GetBytes("{\"amount\":5}")) { Redelivered = true, DeliveryAttempt = 2 };
        var result = await processor.ProcessAsync(redelivery, TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, result.Outcome);
        Assert.True(result.IsCommitted);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'order-3'"));
    }

    [Theory]
    [InlineData(ClaimTiming.BeforeHandler)] // the others wait on the claim and never run their handler
    [InlineData(ClaimTiming.AtCommit)] // all run; the others' commits wait on the key, fail, and roll back
    public async Task Eight_concurrent_workers_on_one_key_give_one_effect_and_seven_duplicates(ClaimTiming timing)
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var options = Options();
        options.ClaimTiming = timing;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            // Hold the transaction a while so the others really overlap it.
            await Task.Delay(200, ct);
            await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {table} (id, applied) VALUES (@id, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1", new { id = context.Key }, context.GetNpgsqlTransaction());
        }), options);

        using var start = new ManualResetEventSlim();
        var tasks = Enumerable.Range(0, 8).Select(_ => Task.Run(async () =>
        {
            start.Wait();
            return await processor.ProcessAsync(Message("hot-key"));
        })).ToArray();
        start.Set();
        var results = await Task.WhenAll(tasks);

        Assert.Equal(1, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(7, results.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'hot-key'"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE idempotency_key = 'hot-key'"));
    }

    [Fact]
    public async Task Same_key_different_payload_fails_under_fail_policy_and_is_a_warned_duplicate_by_default()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var strict = new IdempotentProcessor(store, Credit(table), Options("strict", PayloadMismatchPolicy.Fail));
        var lenient = new IdempotentProcessor(store, Credit(table), Options("lenient"));

        Assert.Equal(ProcessingOutcome.Processed, (await strict.ProcessAsync(Message("k", "{\"amount\":5}"), TestContext.Current.CancellationToken)).Outcome);
        var mismatch = await strict.ProcessAsync(Message("k", "{\"amount\":500}"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.PayloadMismatch, mismatch.Outcome);
        Assert.IsType<PayloadMismatchException>(mismatch.Exception);
        Assert.False(mismatch.StoredFingerprint.Span.SequenceEqual(mismatch.PayloadFingerprint.Span));

        // The lenient handler has its own scope: the same key is new to it.
        Assert.Equal(ProcessingOutcome.Processed, (await lenient.ProcessAsync(Message("k", "{\"amount\":5}"), TestContext.Current.CancellationToken)).Outcome);
        var warned = await lenient.ProcessAsync(Message("k", "{\"amount\":500}"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.Duplicate, warned.Outcome);
        Assert.True(warned.PayloadDiffers);

        // Two handlers, one effect each: scoping by handler name keeps them apart.
        Assert.Equal(2, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'k'"));
    }

    [Fact]
    public async Task Bad_input_gives_clear_errors_and_writes_nothing()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), Options());

        var empty = await processor.ProcessAsync(Message(""), TestContext.Current.CancellationToken);
        var missing = await processor.ProcessAsync(Message(null), TestContext.Current.CancellationToken);
        var tooLong = await processor.ProcessAsync(Message(new string('é', 300)), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.InvalidKey, empty.Outcome);
        Assert.Contains("empty", empty.Exception!.Message);
        Assert.Equal(ProcessingOutcome.InvalidKey, missing.Outcome);
        Assert.Contains("no idempotency key", missing.Exception!.Message);
        Assert.Equal(ProcessingOutcome.InvalidKey, tooLong.Outcome);
        Assert.Contains("600 UTF-8 bytes", tooLong.Exception!.Message);

        var badTable = Assert.Throws<ArgumentException>(() => new PostgresIdempotencyStore(db.DataSource, new PostgresIdempotencyStoreOptions { Table = "x; DROP TABLE y" }));
        Assert.Contains("Table must be a plain SQL identifier", badTable.Message);
        Assert.Throws<ArgumentNullException>(() => new IdempotentProcessor(store, null!, Options()));
        var badOptions = Assert.Throws<ArgumentException>(() => new IdempotentProcessor(store, Credit(table), new IdempotencyOptions { HandlerName = "" }));
        Assert.Contains("HandlerName", badOptions.Message);

        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
    }

    [Fact]
    public async Task Batch_with_duplicates_and_one_failing_handler_commits_the_rest()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table, fail: c => c.Key == "b-13"), Options());

        // Earlier batch: keys 0..9 already processed.
        var earlier = await processor.ProcessBatchAsync(Enumerable.Range(0, 10).Select(i => Message($"b-{i}")).ToList(), TestContext.Current.CancellationToken);
        Assert.All(earlier, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));

        // 100 messages: 0..9 are duplicates of the earlier batch, 10..89 new, and 10 repeats of keys inside the batch.
        var messages = Enumerable.Range(0, 90).Select(i => Message($"b-{i}")).Concat(Enumerable.Range(20, 10).Select(i => Message($"b-{i}"))).ToList();
        var results = await processor.ProcessBatchAsync(messages, TestContext.Current.CancellationToken);

        Assert.Equal(100, results.Count);
        Assert.Equal(ProcessingOutcome.Failed, results[13].Outcome);
        Assert.Equal(79, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(20, results.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(89L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table}"));
        Assert.Equal(89L, await db.ScalarAsync<long>($"SELECT sum(applied) FROM {table}"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = 'b-13'"));
        Assert.Equal(89L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName} WHERE completed_at IS NOT NULL"));
    }

    [Fact]
    public async Task Four_concurrent_batches_over_overlapping_keys_neither_deadlock_nor_double_apply()
    {
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var processor = new IdempotentProcessor(store, Credit(table), Options());
        var random = new Random(42);

        // Each batch holds 100 keys drawn from 150, in a different random order: heavy overlap between batches.
        var batches = Enumerable.Range(0, 4).Select(_ => Enumerable.Range(0, 150).OrderBy(_ => random.Next()).Take(100).Select(i => Message($"o-{i}")).ToList()).ToList();
        var all = await Task.WhenAll(batches.Select(b => Task.Run(async () => await processor.ProcessBatchAsync(b))));

        var unique = batches.SelectMany(b => b).Select(m => m.Key).Distinct().Count();
        Assert.Equal(unique, all.SelectMany(r => r).Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.DoesNotContain(all.SelectMany(r => r), r => r.Outcome is ProcessingOutcome.Failed or ProcessingOutcome.StoreUnavailable);
        Assert.Equal((long)unique, await db.ScalarAsync<long>($"SELECT sum(applied) FROM {table}"));
    }
}
