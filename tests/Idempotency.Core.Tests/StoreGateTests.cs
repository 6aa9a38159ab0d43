using Idempotency.Delivery;
using Idempotency.Health;
using Idempotency.InMemory;
using Idempotency.Storage;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Idempotency.Core.Tests;

public sealed class StoreGateTests
{
    private static readonly BackoffOptions Fast = new() { InitialDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(100) };

    [Fact]
    public async Task A_misconfigured_store_closes_the_gate_unhealthy_with_the_cause_and_a_fix_reopens_it()
    {
        var store = new InMemoryIdempotencyStore { Misconfiguration = "table idempotency.processed_messages does not exist" };
        var registry = new ConsumerHealthRegistry();
        var heartbeat = registry.Register("test:orders", TimeProvider.System);
        var gate = new StoreGate(store, "test:orders", Fast, heartbeat: heartbeat, stopping: TestContext.Current.CancellationToken);

        var failure = await gate.CheckAsync(TestContext.Current.CancellationToken);

        Assert.Equal(StoreFailureKind.Misconfiguration, failure?.Kind);
        Assert.True(gate.IsClosed);
        var health = await new ConsumerHealthCheck(registry, TimeProvider.System, TimeSpan.FromMinutes(1)).CheckHealthAsync(new HealthCheckContext(), TestContext.Current.CancellationToken);
        Assert.Equal(HealthStatus.Unhealthy, health.Status);
        Assert.Contains("does not exist", health.Description, StringComparison.Ordinal);
        Assert.False(gate.WaitAsync(TestContext.Current.CancellationToken).IsCompleted);

        store.Misconfiguration = null;
        await gate.WaitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.False(gate.IsClosed);
        Assert.Equal(ConsumerState.Running, heartbeat.State);
    }

    [Fact]
    public async Task An_outage_pauses_degraded_and_reopens_when_the_store_answers()
    {
        var store = new InMemoryIdempotencyStore { Unavailable = true };
        var heartbeat = new ConsumerHealthRegistry().Register("test", TimeProvider.System);
        var gate = new StoreGate(store, "test", Fast, heartbeat: heartbeat, stopping: TestContext.Current.CancellationToken);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), TestMessages.Options());
        var result = await processor.ProcessAsync(TestMessages.Create("k"), TestContext.Current.CancellationToken);

        Assert.True(gate.Close(result));
        Assert.False(gate.Close(result));
        Assert.Equal(ConsumerState.Paused, heartbeat.State);
        Assert.Equal(1, gate.Closures);

        store.Unavailable = false;
        await gate.WaitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(ConsumerState.Running, heartbeat.State);
    }

    [Fact]
    public async Task A_gate_that_closes_again_with_nothing_committed_since_it_reopened_backs_off_longer_each_time()
    {
        // The store's check passes while its work fails (as a server that answers reads but takes no writes does): the
        // gate reopens after every probe, and without this each round would give the messages back after the first delay.
        var backoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromSeconds(10), UseJitter = false };
        var gate = new StoreGate(new InMemoryIdempotencyStore(), "test", backoff, stopping: TestContext.Current.CancellationToken);
        var outage = new StoreFailure(StoreFailureKind.Outage, "no writes");
        var delays = new List<TimeSpan>();
        async Task CloseAndReopenAsync()
        {
            Assert.True(gate.Close(outage));
            delays.Add(gate.GiveBackDelay);
            await gate.WaitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        }

        await CloseAndReopenAsync();
        await CloseAndReopenAsync();
        await CloseAndReopenAsync();
        gate.RecordWork();
        await CloseAndReopenAsync();

        Assert.Equal([TimeSpan.FromMilliseconds(10), TimeSpan.FromMilliseconds(20), TimeSpan.FromMilliseconds(40), TimeSpan.FromMilliseconds(10)], delays);
        Assert.Equal(4, gate.Closures);
    }

    [Fact]
    public async Task An_in_memory_misconfiguration_is_classified_as_such_by_the_pipeline()
    {
        var store = new InMemoryIdempotencyStore { Misconfiguration = "wrong password" };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), TestMessages.Options());

        var result = await processor.ProcessAsync(TestMessages.Create("k"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.StoreMisconfigured, result.Outcome);
        Assert.Equal("wrong password", result.StoreFailure?.Description);
    }

    [Fact]
    public void The_attempt_ledger_counts_only_handler_failures()
    {
        var ledger = new AttemptLedger(capacity: 2);
        ledger.RecordRequeue("m1");
        ledger.RecordRequeue("m1");
        Assert.Equal(1, ledger.NextAttempt("m1"));
        ledger.RecordFailure("m1");
        Assert.Equal(2, ledger.NextAttempt("m1"));
        ledger.Forget("m1");
        Assert.Equal(1, ledger.NextAttempt("m1"));
    }
}
