using System.Collections.Concurrent;
using Idempotency.InMemory;
using Idempotency.Storage;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

public sealed class ClaimAtCommitTests
{
    private readonly InMemoryIdempotencyStore _store = new();
    private readonly ConcurrentDictionary<string, int> _effects = new();
    private int _runs;

    private static IdempotencyOptions AtCommit() => new() { HandlerName = "h", ClaimTiming = ClaimTiming.AtCommit };

    private IIdempotentMessageHandler Effect(TimeSpan? hold = null) => IdempotentHandler.Create(async (context, ct) =>
    {
        Interlocked.Increment(ref _runs);
        var key = context.Key;
        ((InMemoryIdempotencyStore.InMemoryTransaction)context.Transaction).OnCommit(() => _effects.AddOrUpdate(key, 1, (_, n) => n + 1));
        if (hold is { } delay)
        {
            await Task.Delay(delay, ct);
        }
    });

    [Fact]
    public void At_commit_with_a_store_that_cannot_do_it_fails_at_construction_naming_the_option()
    {
        var error = Assert.Throws<ArgumentException>(() => new IdempotentProcessor(new ClaimFirstOnlyStore(), Effect(), AtCommit()));

        Assert.Contains(nameof(IdempotencyOptions.ClaimTiming), error.Message, StringComparison.Ordinal);
        Assert.Contains("'claim-first'", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Unknown_claim_timing_is_a_validation_error()
    {
        var options = new IdempotencyOptions { HandlerName = "h", ClaimTiming = (ClaimTiming)7 };

        Assert.Contains(options.GetValidationErrors(), e => e.Contains(nameof(IdempotencyOptions.ClaimTiming), StringComparison.Ordinal));
    }

    [Fact]
    public async Task Duplicate_found_at_commit_applies_no_second_effect()
    {
        var processor = new IdempotentProcessor(_store, Effect(), AtCommit());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken)).Outcome);

        Assert.Equal(2, _runs);
        Assert.Equal(1, _effects["a"]);
    }

    [Fact]
    public async Task Redelivered_message_is_looked_up_before_the_handler()
    {
        var processor = new IdempotentProcessor(_store, Effect(), AtCommit());

        await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);
        var again = await processor.ProcessAsync(new IncomingMessage("a", "{}"u8.ToArray()) { Redelivered = true }, TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, again.Outcome);
        Assert.Equal(1, _runs);
    }

    [Fact]
    public async Task Concurrent_copies_of_one_key_commit_one_effect()
    {
        var processor = new IdempotentProcessor(_store, Effect(TimeSpan.FromMilliseconds(50)), AtCommit());

        var results = await Task.WhenAll(Enumerable.Range(0, 6).Select(_ => processor.ProcessAsync(Create("hot"), TestContext.Current.CancellationToken).AsTask()));

        Assert.Equal(1, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(5, results.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(1, _effects["hot"]);
    }

    [Fact]
    public async Task Store_down_is_store_unavailable_not_a_failure()
    {
        var processor = new IdempotentProcessor(_store, Effect(), AtCommit());
        _store.Unavailable = true;

        var result = await processor.ProcessAsync(Create("a"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.StoreUnavailable, result.Outcome);
        Assert.Equal(0, _store.Count);
    }
}
