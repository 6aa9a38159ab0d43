using System.Collections.Concurrent;
using Idempotency.InMemory;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

public sealed class ProcessorTests
{
    private readonly InMemoryIdempotencyStore _store = new();
    private readonly ConcurrentDictionary<string, int> _effects = new();

    /// <summary>A handler whose effect applies only when the store transaction commits.</summary>
    private IIdempotentMessageHandler Effect(Func<MessageContext, bool>? fail = null) => IdempotentHandler.Create((context, _) =>
    {
        if (fail?.Invoke(context) == true)
        {
            throw new InvalidOperationException("boom " + context.Key);
        }

        var key = context.Key;
        ((InMemoryIdempotencyStore.InMemoryTransaction)context.Transaction).OnCommit(() => _effects.AddOrUpdate(key, 1, (_, n) => n + 1));
        return ValueTask.CompletedTask;
    });

    [Fact]
    public async Task Duplicate_delivery_runs_handler_once()
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options());

        var first = await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);
        var second = await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, first.Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, second.Outcome);
        Assert.Equal(1, _effects["a"]);
        Assert.NotNull(_store.Find("h", "a"));
    }

    [Fact]
    public async Task Failing_handler_commits_nothing_and_the_retry_applies_once()
    {
        var fail = true;
        var processor = new IdempotentProcessor(_store, Effect(_ => fail), Options());

        var failed = await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.Failed, failed.Outcome);
        Assert.False(failed.IsCommitted);
        Assert.Empty(_effects);
        Assert.Null(_store.Find("h", "a"));

        fail = false;
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(1, _effects["a"]);
    }

    [Fact]
    public async Task Concurrent_copies_of_one_key_apply_once()
    {
        var processor = new IdempotentProcessor(_store, IdempotentHandler.Create(async (context, ct) =>
        {
            await Task.Delay(50, ct);
            ((InMemoryIdempotencyStore.InMemoryTransaction)context.Transaction).OnCommit(() => _effects.AddOrUpdate(context.Key, 1, (_, n) => n + 1));
        }), Options());

        var results = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(async () => await processor.ProcessAsync(Create("hot")))));

        Assert.Equal(1, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(7, results.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(1, _effects["hot"]);
    }

    [Theory]
    [InlineData(PayloadMismatchPolicy.TreatAsDuplicate, ProcessingOutcome.Duplicate)]
    [InlineData(PayloadMismatchPolicy.Fail, ProcessingOutcome.PayloadMismatch)]
    [InlineData(PayloadMismatchPolicy.Quarantine, ProcessingOutcome.PayloadMismatch)]
    public async Task Known_key_with_other_payload_follows_the_policy(PayloadMismatchPolicy policy, ProcessingOutcome expected)
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options(policy: policy));
        await processor.ProcessAsync(Create("a", "one"), TestContext.Current.CancellationToken);

        var result = await processor.ProcessAsync(Create("a", "two"), TestContext.Current.CancellationToken);

        Assert.Equal(expected, result.Outcome);
        Assert.Equal(PayloadFingerprint.Compute("one"u8), result.StoredFingerprint.ToArray());
        Assert.Equal(PayloadFingerprint.Compute("two"u8), result.PayloadFingerprint.ToArray());
        Assert.Equal(1, _effects["a"]);
        if (expected == ProcessingOutcome.Duplicate)
        {
            Assert.True(result.PayloadDiffers);
        }
        else
        {
            Assert.IsType<PayloadMismatchException>(result.Exception);
        }
    }

    [Fact]
    public async Task Same_key_same_payload_is_a_plain_duplicate_not_a_mismatch()
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options(policy: PayloadMismatchPolicy.Fail));
        await processor.ProcessAsync(Create("a", "same"), TestContext.Current.CancellationToken);
        var result = await processor.ProcessAsync(Create("a", "same"), TestContext.Current.CancellationToken);
        Assert.Equal(ProcessingOutcome.Duplicate, result.Outcome);
        Assert.False(result.PayloadDiffers);
    }

    [Fact]
    public async Task Handlers_are_scoped_by_name()
    {
        var orders = new IdempotentProcessor(_store, Effect(), Options("orders"));
        var audit = new IdempotentProcessor(_store, Effect(), Options("audit"));

        Assert.Equal(ProcessingOutcome.Processed, (await orders.ProcessAsync(Create("k"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(ProcessingOutcome.Processed, (await audit.ProcessAsync(Create("k"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(2, _effects["k"]);
    }

    [Theory]
    [InlineData(null, "no idempotency key")]
    [InlineData("", "empty")]
    [InlineData("   ", "empty")]
    public async Task Missing_or_empty_key_is_rejected_before_anything_runs(string? key, string reason)
    {
        var runs = 0;
        var processor = new IdempotentProcessor(_store, IdempotentHandler.Create((_, _) => { runs++; return ValueTask.CompletedTask; }), Options());

        var result = await processor.ProcessAsync(Create(key), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.InvalidKey, result.Outcome);
        Assert.IsType<InvalidIdempotencyKeyException>(result.Exception);
        Assert.Contains(reason, result.Exception!.Message);
        Assert.Equal(0, runs);
        Assert.Equal(0, _store.Count);
    }

    [Fact]
    public async Task Key_longer_than_the_limit_in_utf8_bytes_is_rejected()
    {
        var processor = new IdempotentProcessor(_store, Effect(), new IdempotencyOptions { HandlerName = "h", MaxKeyBytes = 10 });

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Create("0123456789"), TestContext.Current.CancellationToken)).Outcome);
        var result = await processor.ProcessAsync(Create("ééééé1"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.InvalidKey, result.Outcome);
        Assert.Contains("11 UTF-8 bytes", result.Exception!.Message);
    }

    [Fact]
    public async Task Store_outage_is_store_unavailable_not_failed()
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options());
        _store.Unavailable = true;

        var single = await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);
        var batch = await processor.ProcessBatchAsync([Create("b"), Create("c")], TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.StoreUnavailable, single.Outcome);
        Assert.All(batch, r => Assert.Equal(ProcessingOutcome.StoreUnavailable, r.Outcome));
        Assert.Empty(_effects);
    }

    [Fact]
    public async Task Handler_cancelled_by_shutdown_throws_and_commits_nothing()
    {
        using var shutdown = new CancellationTokenSource();
        var processor = new IdempotentProcessor(_store, IdempotentHandler.Create(async (_, ct) =>
        {
            await shutdown.CancelAsync();
            ct.ThrowIfCancellationRequested();
        }), Options());

        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await processor.ProcessAsync(Create("a"), shutdown.Token));
        Assert.Equal(0, _store.Count);

        // The key is free again: the redelivery after restart processes it.
        var next = new IdempotentProcessor(_store, Effect(), Options());
        Assert.Equal(ProcessingOutcome.Processed, (await next.ProcessAsync(Create("a"), TestContext.Current.CancellationToken)).Outcome);
    }

    [Fact]
    public async Task Batch_isolates_a_failing_message_and_commits_the_others()
    {
        var processor = new IdempotentProcessor(_store, Effect(c => c.Key == "m-3"), Options());
        await processor.ProcessAsync(Create("m-0"), TestContext.Current.CancellationToken);

        var messages = Enumerable.Range(0, 10).Select(i => Create($"m-{i}")).Append(Create("m-5")).ToList();
        var results = await processor.ProcessBatchAsync(messages, TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, results[0].Outcome);
        Assert.Equal(ProcessingOutcome.Failed, results[3].Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, results[10].Outcome);
        Assert.Equal(8, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(9, _effects.Count);
        Assert.All(_effects.Values, n => Assert.Equal(1, n));
        Assert.False(_effects.ContainsKey("m-3"));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task Batch_copy_of_a_key_whose_first_copy_failed_goes_back_untried_instead_of_failing(int poisonKeys)
    {
        // A copy never runs its handler; reported Failed, the adapters charged it an attempt (RabbitMQ counts per key, so
        // a poison key sent twice was dead-lettered one run early). One poison key takes the redo path, three the
        // one-at-a-time path.
        var poison = Enumerable.Range(0, poisonKeys).Select(i => $"p-{i}").ToList();
        var runs = new ConcurrentDictionary<string, int>();
        var processor = new IdempotentProcessor(_store, Effect(c => runs.AddOrUpdate(c.Key, 1, (_, n) => n + 1) > 0 && poison.Contains(c.Key)), Options());
        var messages = poison.Select(k => Create(k)).Append(Create("a")).Concat(poison.Select(k => Create(k))).Append(Create("b")).ToList();

        var results = await processor.ProcessBatchAsync(messages, TestContext.Current.CancellationToken);

        for (var i = 0; i < poisonKeys; i++)
        {
            Assert.Equal(ProcessingOutcome.Failed, results[i].Outcome);
            Assert.Equal(ProcessingOutcome.InProgress, results[poisonKeys + 1 + i].Outcome);
            Assert.Equal(1, runs[$"p-{i}"]);
        }

        Assert.Equal(ProcessingOutcome.Processed, results[poisonKeys].Outcome);
        Assert.Equal(ProcessingOutcome.Processed, results[^1].Outcome);
        Assert.Equal(["a", "b"], _effects.Keys.Order());
    }

    [Fact]
    public async Task Batch_with_several_poison_messages_still_commits_every_good_one()
    {
        var poison = new HashSet<string> { "m-1", "m-4", "m-7", "m-8" };
        var processor = new IdempotentProcessor(_store, Effect(c => poison.Contains(c.Key)), Options());

        var results = await processor.ProcessBatchAsync(Enumerable.Range(0, 10).Select(i => Create($"m-{i}")).ToList(), TestContext.Current.CancellationToken);

        Assert.Equal(4, results.Count(r => r.Outcome == ProcessingOutcome.Failed));
        Assert.Equal(6, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(6, _effects.Count);
    }

    [Fact]
    public async Task Batch_handler_gets_only_new_messages_in_delivery_order()
    {
        var seen = new List<string>();
        var processor = new IdempotentProcessor(_store, IdempotentHandler.CreateBatch(
            (batch, _) => { seen.AddRange(batch.Messages.Select(m => m.Key)); return ValueTask.CompletedTask; },
            (_, _) => throw new InvalidOperationException("not used")), Options());
        await new IdempotentProcessor(_store, Effect(), Options()).ProcessAsync(Create("c"), TestContext.Current.CancellationToken);

        var results = await processor.ProcessBatchAsync([Create("z"), Create("c"), Create("a"), Create("m")], TestContext.Current.CancellationToken);

        Assert.Equal(["z", "a", "m"], seen);
        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Duplicate, ProcessingOutcome.Processed, ProcessingOutcome.Processed], results.Select(r => r.Outcome));
    }

    [Fact]
    public async Task Batch_handler_failure_falls_back_to_one_message_at_a_time()
    {
        var processor = new IdempotentProcessor(_store, IdempotentHandler.CreateBatch(
            (_, _) => throw new InvalidOperationException("set-based write failed"),
            (context, _) => context.Key == "bad" ? throw new InvalidOperationException("bad") : ValueTask.CompletedTask), Options());

        var results = await processor.ProcessBatchAsync([Create("a"), Create("bad"), Create("c")], TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Failed, ProcessingOutcome.Processed], results.Select(r => r.Outcome));
        Assert.Equal(2, _store.Count);
    }

    [Fact]
    public async Task Outbox_messages_commit_with_the_effects_and_vanish_on_rollback()
    {
        var processor = new IdempotentProcessor(_store, IdempotentHandler.Create((context, _) =>
        {
            context.AddOutgoing(new Outbox.OutboxMessage("accepted", context.Key, context.Body));
            return context.Key == "bad" ? throw new InvalidOperationException() : ValueTask.CompletedTask;
        }), Options());

        await processor.ProcessAsync(Create("good"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(Create("bad"), TestContext.Current.CancellationToken);

        var sent = Assert.Single(_store.CommittedOutbox);
        Assert.Equal("good", sent.Key);
    }
}
