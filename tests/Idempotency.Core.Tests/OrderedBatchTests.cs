using System.Collections.Concurrent;
using Idempotency.InMemory;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

/// <summary>
/// <see cref="IdempotentProcessor.ProcessBatchInOrderAsync"/>: a batch of one ordered lane commits up to its first
/// message that does not commit and processes nothing after it, whichever path the batch takes.
/// </summary>
public sealed class OrderedBatchTests
{
    private readonly InMemoryIdempotencyStore _store = new();
    private readonly ConcurrentQueue<string> _committed = new();
    private readonly ConcurrentDictionary<string, int> _calls = new();

    /// <summary>A handler whose effect is recorded, in commit order, only when the store transaction commits.</summary>
    private IIdempotentMessageHandler Effect(Func<string, int, bool>? fail = null) => IdempotentHandler.Create((context, _) =>
    {
        var key = context.Key;
        var call = _calls.AddOrUpdate(key, 1, (_, n) => n + 1);
        if (fail?.Invoke(key, call) == true)
        {
            throw new InvalidOperationException("boom " + key);
        }

        ((InMemoryIdempotencyStore.InMemoryTransaction)context.Transaction).OnCommit(() => _committed.Enqueue(key));
        return ValueTask.CompletedTask;
    });

    private static List<IncomingMessage> Messages(int count) => Enumerable.Range(0, count).Select(i => Create($"m-{i}")).ToList();

    [Fact]
    public async Task A_failing_handler_ends_the_batch_the_earlier_messages_commit_and_the_later_ones_are_not_claimed()
    {
        var processor = new IdempotentProcessor(_store, Effect((key, _) => key == "m-3"), Options());
        await processor.ProcessAsync(Create("m-0"), TestContext.Current.CancellationToken);

        var results = await processor.ProcessBatchInOrderAsync([.. Messages(10), Create("m-5")], TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Duplicate, ProcessingOutcome.Processed, ProcessingOutcome.Processed, ProcessingOutcome.Failed], results.Select(r => r.Outcome));
        Assert.Equal(["m-0", "m-1", "m-2"], _committed);
        Assert.All(Enumerable.Range(3, 7), i => Assert.Null(_store.Find("h", $"m-{i}")));
        Assert.All(Enumerable.Range(4, 6), i => Assert.False(_calls.ContainsKey($"m-{i}"), $"m-{i} ran in the committed transaction"));

        // The caller retries the failed one, then processes the rest: every effect lands in delivery order.
        var fixedProcessor = new IdempotentProcessor(_store, Effect(), Options());
        Assert.Equal(ProcessingOutcome.Processed, (await fixedProcessor.ProcessAsync(Create("m-3"), TestContext.Current.CancellationToken)).Outcome);
        var rest = await fixedProcessor.ProcessBatchInOrderAsync(Messages(10).Skip(4).ToList(), TestContext.Current.CancellationToken);
        Assert.Equal(6, rest.Count);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => $"m-{i}"), _committed);
    }

    [Fact]
    public async Task A_second_failure_in_the_redo_moves_the_end_earlier()
    {
        // m-6 always fails; m-3 passes its first run (in the attempt m-6 broke) and fails in the redo.
        var processor = new IdempotentProcessor(_store, Effect((key, call) => key == "m-6" || (key == "m-3" && call > 1)), Options());

        var results = await processor.ProcessBatchInOrderAsync(Messages(10), TestContext.Current.CancellationToken);

        Assert.Equal(4, results.Count);
        Assert.Equal(ProcessingOutcome.Failed, results[3].Outcome);
        Assert.Equal(["m-0", "m-1", "m-2"], _committed);
        Assert.Null(_store.Find("h", "m-4"));
    }

    [Fact]
    public async Task A_failing_set_based_handler_goes_one_message_at_a_time_and_stops_at_the_first_failure()
    {
        var single = Effect((key, _) => key == "m-2");
        var processor = new IdempotentProcessor(_store, IdempotentHandler.CreateBatch(
            (_, _) => throw new InvalidOperationException("set-based write failed"),
            single.HandleAsync), Options());

        var results = await processor.ProcessBatchInOrderAsync(Messages(6), TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Processed, ProcessingOutcome.Failed], results.Select(r => r.Outcome));
        Assert.Equal(["m-0", "m-1"], _committed);
        Assert.False(_calls.ContainsKey("m-3"));
    }

    [Fact]
    public async Task An_invalid_key_ends_the_batch_before_any_later_message_runs()
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options());

        var results = await processor.ProcessBatchInOrderAsync([Create("a"), Create(null), Create("c")], TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.InvalidKey], results.Select(r => r.Outcome));
        Assert.Equal(["a"], _committed);
        Assert.Null(_store.Find("h", "c"));
    }

    [Fact]
    public async Task While_duplicates_are_looked_up_first_the_batch_still_ends_at_the_first_failure()
    {
        var processor = new IdempotentProcessor(_store, Effect((key, _) => key == "n-1"), Options());
        var seen = Enumerable.Range(0, 40).Select(i => Create($"d-{i}")).ToList();
        await processor.ProcessBatchInOrderAsync(seen, TestContext.Current.CancellationToken);
        await processor.ProcessBatchInOrderAsync(seen, TestContext.Current.CancellationToken); // 40 duplicates: keys are looked up first from now on
        Assert.True(processor.DuplicatesLikely);
        _committed.Clear();

        var results = await processor.ProcessBatchInOrderAsync(
            [Create("d-0"), Create("d-1"), Create("n-0"), Create("n-1"), Create("n-2"), Create("d-2")],
            TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Duplicate, ProcessingOutcome.Duplicate, ProcessingOutcome.Processed, ProcessingOutcome.Failed], results.Select(r => r.Outcome));
        Assert.Equal(["n-0"], _committed);
        Assert.Null(_store.Find("h", "n-2"));
    }

    [Fact]
    public async Task A_payload_mismatch_found_by_the_claim_ends_the_batch_and_nothing_after_it_commits()
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options(policy: PayloadMismatchPolicy.Fail));
        await processor.ProcessAsync(Create("m-1", "first"), TestContext.Current.CancellationToken);
        _committed.Clear();

        var results = await processor.ProcessBatchInOrderAsync([Create("m-0"), Create("m-1", "changed"), Create("m-2")], TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.PayloadMismatch], results.Select(r => r.Outcome));
        Assert.Equal(["m-0"], _committed);
        Assert.Null(_store.Find("h", "m-2"));
    }

    [Theory]
    [InlineData(PayloadMismatchPolicy.Fail)]
    [InlineData(PayloadMismatchPolicy.Quarantine)]
    public async Task A_later_copy_of_a_key_with_another_payload_ends_the_batch_before_any_later_message_commits(PayloadMismatchPolicy policy)
    {
        var processor = new IdempotentProcessor(_store, Effect(), Options(policy: policy));

        // m-1's second copy carries another payload: a mismatch, which does not commit; m-3 comes after it.
        var results = await processor.ProcessBatchInOrderAsync(
            [Create("m-0"), Create("m-1", "first"), Create("m-1", "changed"), Create("m-3")],
            TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Processed, ProcessingOutcome.PayloadMismatch], results.Select(r => r.Outcome));
        Assert.Equal(["m-0", "m-1"], _committed);
        Assert.Null(_store.Find("h", "m-3"));
        Assert.False(_calls.ContainsKey("m-3"), "m-3 ran in the transaction that committed before the mismatch settled");
    }

    [Fact]
    public async Task Without_order_the_batch_still_commits_every_message_but_the_failing_one()
    {
        var processor = new IdempotentProcessor(_store, Effect((key, _) => key == "m-3"), Options());

        var results = await processor.ProcessBatchAsync(Messages(6), TestContext.Current.CancellationToken);

        Assert.Equal(6, results.Count);
        Assert.Equal(5, _committed.Count);
    }
}
