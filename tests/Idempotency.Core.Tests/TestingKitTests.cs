using System.Collections.Concurrent;
using System.Text;
using Idempotency.InMemory;
using Idempotency.Testing;

namespace Idempotency.Core.Tests;

public sealed class TestingKitTests
{
    private readonly ConcurrentDictionary<string, int> _effects = new();

    private ValueTask<int> Count(string key, CancellationToken _) => ValueTask.FromResult(_effects.GetValueOrDefault(key));

    private static IncomingMessage Message(string key) => new(key, Encoding.UTF8.GetBytes($$"""{"id":"{{key}}","total":10}"""));

    [Fact]
    public async Task Transactional_handler_passes_every_redelivery_scenario_on_the_in_memory_store()
    {
        var handler = IdempotentHandler.Create<Order>((order, context, _) =>
        {
            context.OnInMemoryCommit(() => _effects.AddOrUpdate(order.Id, 1, (_, n) => n + 1));
            return ValueTask.CompletedTask;
        });

        var report = await new RedeliveryScenarioRunner(new InMemoryIdempotencyStore(), handler, Message, Count)
            .RunAsync(TestContext.Current.CancellationToken);

        report.AssertExactlyOnce();
        Assert.Equal(Enum.GetValues<RedeliveryScenario>(), report.Results.Select(r => r.Scenario));
        var concurrent = report.Results.Single(r => r.Scenario == RedeliveryScenario.ConcurrentCopies);
        Assert.Contains(ProcessingOutcome.Duplicate, concurrent.Outcomes);
    }

    [Fact]
    public async Task Effect_written_outside_the_transaction_is_caught_by_the_failure_then_retry_scenario()
    {
        // The classic mistake: the effect does not join the store's transaction, so a rolled-back attempt still applied it.
        var handler = IdempotentHandler.Create((context, _) =>
        {
            _effects.AddOrUpdate(context.Key, 1, (_, n) => n + 1);
            return ValueTask.CompletedTask;
        });

        var report = await new RedeliveryScenarioRunner(new InMemoryIdempotencyStore(), handler, Message, Count)
            .RunAsync(TestContext.Current.CancellationToken);

        var failed = Assert.Single(report.Results, r => !r.Passed);
        Assert.Equal(RedeliveryScenario.FailureThenRetry, failed.Scenario);
        Assert.Equal(2, failed.EffectCount);
        var exception = Assert.Throws<RedeliveryScenarioException>(report.AssertExactlyOnce);
        Assert.Contains("FailureThenRetry", exception.Message);
    }

    [Fact]
    public async Task Context_factory_lets_a_handler_be_unit_tested_without_a_processor()
    {
        var store = new InMemoryIdempotencyStore();
        var handler = IdempotentHandler.Create<Order>((order, context, _) =>
        {
            context.OnInMemoryCommit(() => _effects[order.Id] = 1);
            return ValueTask.CompletedTask;
        });

        var transaction = await store.BeginAsync(TestContext.Current.CancellationToken);
        var context = ContextFactory.CreateJsonMessageContext("o-1", new Order("o-1", 3m), transaction, "orders");
        await handler.HandleAsync(context, TestContext.Current.CancellationToken);
        Assert.Empty(_effects);                                   // not committed yet
        await transaction.CommitAsync([], [], TestContext.Current.CancellationToken);

        Assert.Equal("orders", context.HandlerName);
        Assert.Equal(1, _effects["o-1"]);
    }

    [Fact]
    public async Task Batch_context_factory_shares_one_transaction()
    {
        var batch = ContextFactory.CreateBatchContext([Message("a"), Message("b")]);
        var seen = new List<string>();

        await IdempotentHandler.CreateBatch((b, _) =>
        {
            seen.AddRange(b.Messages.Select(m => m.Key));
            return ValueTask.CompletedTask;
        }).HandleBatchAsync(batch, TestContext.Current.CancellationToken);

        Assert.Equal(["a", "b"], seen);
        Assert.All(batch.Messages, m => Assert.Same(batch.Transaction, m.Transaction));
        Assert.Throws<ArgumentException>(() => ContextFactory.CreateMessageContext(new IncomingMessage(null, Array.Empty<byte>())));
    }
}
