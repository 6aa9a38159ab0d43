using Idempotency.InMemory;
using Idempotency.Storage;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

/// <summary>Keys looked up before they are claimed: one by one once duplicates dominate, or many at once for an adapter.</summary>
public sealed class DuplicateLookupTests
{
    private readonly CountingStore _store = new();
    private int _runs;

    private IIdempotentMessageHandler Handler() => IdempotentHandler.Create((_, _) =>
    {
        Interlocked.Increment(ref _runs);
        return ValueTask.CompletedTask;
    });

    [Fact]
    public async Task Batch_look_up_settles_committed_keys_and_leaves_new_invalid_and_changed_ones_to_processing()
    {
        var processor = new IdempotentProcessor(_store, Handler(), Options(policy: PayloadMismatchPolicy.Fail));
        await processor.ProcessAsync(Create("a", "one"), TestContext.Current.CancellationToken);
        await processor.ProcessAsync(Create("b", "two"), TestContext.Current.CancellationToken);

        var found = await processor.LookUpProcessedAsync(
            [Create("a", "one"), Create("new", "x"), Create("b", "changed"), Create(null)],
            TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, found[0]?.Outcome);
        Assert.Null(found[1]);
        Assert.Equal(ProcessingOutcome.PayloadMismatch, found[2]?.Outcome);
        Assert.Null(found[3]);
        Assert.Equal(1, _store.BatchLookUps);
        Assert.Equal(2, _store.Begins);
    }

    [Fact]
    public async Task Batch_look_up_with_the_store_down_answers_nothing_and_processing_finds_out()
    {
        var processor = new IdempotentProcessor(_store, Handler(), Options());
        await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);
        _store.Inner.Unavailable = true;

        var found = await processor.LookUpProcessedAsync([Create("a")], TestContext.Current.CancellationToken);

        Assert.Null(found[0]);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, (await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken)).Outcome);
    }

    [Theory]
    [InlineData(ClaimTiming.BeforeHandler)]
    [InlineData(ClaimTiming.AtCommit)]
    public async Task A_replay_is_looked_up_instead_of_claimed_once_most_messages_are_duplicates(ClaimTiming timing)
    {
        var processor = new IdempotentProcessor(_store, Handler(), new IdempotencyOptions { HandlerName = "h", ClaimTiming = timing });
        for (var i = 0; i < 100; i++)
        {
            await processor.ProcessAsync(Create($"k{i}"), TestContext.Current.CancellationToken);
        }

        Assert.False(processor.DuplicatesLikely);
        var begins = _store.Begins;
        for (var i = 0; i < 100; i++)
        {
            Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Create($"k{i}"), TestContext.Current.CancellationToken)).Outcome);
        }

        // The first duplicates open a transaction each until the moving average crosses its threshold (about 10 of
        // them for a quarter, 22 for a half); after that each costs one look-up and no transaction.
        Assert.InRange(_store.Begins - begins, 5, 30);
        Assert.InRange(_store.LookUps, 70, 100);
        Assert.True(processor.DuplicatesLikely);

        // At commit the handler runs (and is rolled back) for each duplicate that opened a transaction.
        Assert.Equal(100 + (timing == ClaimTiming.AtCommit ? _store.Begins - begins : 0), _runs);
    }

    [Fact]
    public async Task A_replayed_batch_is_looked_up_once_duplicates_dominate_and_only_its_new_messages_are_claimed()
    {
        var order = new List<string>();
        var processor = new IdempotentProcessor(_store, IdempotentHandler.Create((context, _) =>
        {
            lock (order)
            {
                order.Add(context.Key);
            }

            return ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = "h" });
        var ct = TestContext.Current.CancellationToken;
        var first = await processor.ProcessBatchAsync([.. Enumerable.Range(0, 50).Select(i => Create($"k{i}"))], ct);
        Assert.All(first, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));
        Assert.Equal(0, _store.BatchLookUps);

        // The first replayed batch is claimed (its 50 duplicates cost one transaction) and moves the duplicate rate up.
        var replay = await processor.ProcessBatchAsync([.. Enumerable.Range(0, 50).Select(i => Create($"k{i}"))], ct);
        Assert.All(replay, r => Assert.Equal(ProcessingOutcome.Duplicate, r.Outcome));
        Assert.Equal(0, _store.BatchLookUps);
        Assert.True(processor.DuplicatesLikely);

        // From now on a batch is looked up first: its duplicates take no transaction, its new messages one, in order.
        order.Clear();
        var begins = _store.Begins;
        var mixed = await processor.ProcessBatchAsync([Create("k1"), Create("n1"), Create("k2"), Create("n2"), Create("n3"), Create("k3")], ct);
        Assert.Equal(
            [ProcessingOutcome.Duplicate, ProcessingOutcome.Processed, ProcessingOutcome.Duplicate, ProcessingOutcome.Processed, ProcessingOutcome.Processed, ProcessingOutcome.Duplicate],
            mixed.Select(r => r.Outcome));
        Assert.Equal(["n1", "n2", "n3"], order);
        Assert.Equal(1, _store.BatchLookUps);
        Assert.Equal(1, _store.Begins - begins);

        var allKnown = await processor.ProcessBatchAsync([Create("k4"), Create("n1"), Create("k5")], ct);
        Assert.All(allKnown, r => Assert.Equal(ProcessingOutcome.Duplicate, r.Outcome));
        Assert.Equal(2, _store.BatchLookUps);
        Assert.Equal(1, _store.Begins - begins);
        Assert.Equal(["n1", "n2", "n3"], order);

        // One new message among duplicates: claimed in one transaction, its key not looked up a second time.
        var oneNew = await processor.ProcessBatchAsync([Create("k6"), Create("n4"), Create("k7")], ct);
        Assert.Equal([ProcessingOutcome.Duplicate, ProcessingOutcome.Processed, ProcessingOutcome.Duplicate], oneNew.Select(r => r.Outcome));
        Assert.Equal(3, _store.BatchLookUps);
        Assert.Equal(0, _store.LookUps);
        Assert.Equal(2, _store.Begins - begins);
        Assert.Equal(["n1", "n2", "n3", "n4"], order);
    }

    [Fact]
    public async Task A_message_marked_looked_up_is_not_looked_up_again()
    {
        var processor = new IdempotentProcessor(_store, Handler(), new IdempotencyOptions { HandlerName = "h", ClaimTiming = ClaimTiming.AtCommit });

        await processor.ProcessAsync(new IncomingMessage("a", "{}"u8.ToArray()) { Redelivered = true, KeyLookedUp = true }, TestContext.Current.CancellationToken);
        await processor.ProcessAsync(new IncomingMessage("b", "{}"u8.ToArray()) { Redelivered = true }, TestContext.Current.CancellationToken);

        Assert.Equal(1, _store.LookUps);
        Assert.Equal(2, _runs);
    }

    /// <summary>The in-memory store, counting transactions and look-ups.</summary>
    private sealed class CountingStore : IDeferredClaimStore
    {
        private int _begins;
        private int _lookUps;
        private int _batchLookUps;

        public InMemoryIdempotencyStore Inner { get; } = new();

        public int Begins => Volatile.Read(ref _begins);

        public int LookUps => Volatile.Read(ref _lookUps);

        public int BatchLookUps => Volatile.Read(ref _batchLookUps);

        public string Name => "counting";

        public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _begins);
            return Inner.BeginAsync(cancellationToken);
        }

        public ValueTask<ClaimResult?> FindProcessedAsync(ClaimRequest request, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _lookUps);
            return Inner.FindProcessedAsync(request, cancellationToken);
        }

        public ValueTask<IReadOnlyList<ClaimResult?>> FindProcessedBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _batchLookUps);
            return Inner.FindProcessedBatchAsync(requests, cancellationToken);
        }

        public bool IsUnavailable(Exception exception) => Inner.IsUnavailable(exception);

        public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => Inner.PingAsync(cancellationToken);
    }
}
