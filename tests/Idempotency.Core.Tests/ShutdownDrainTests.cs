using Idempotency.Delivery;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Time.Testing;

namespace Idempotency.Core.Tests;

/// <summary>
/// The graceful-stop rule every adapter uses: in-flight work gets the shutdown timeout on the consumer's clock, then it is
/// cut and the drain waits for it to unwind; an abort cuts at once. Both the awaitable form (RabbitMQ, SQS) and the
/// blocking one (Kafka's rebalance callback).
/// </summary>
public sealed class ShutdownDrainTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    public static TheoryData<bool> Forms => new() { true, false };

    [Theory]
    [MemberData(nameof(Forms))]
    public async Task Work_that_settles_within_the_timeout_is_not_cut(bool awaitable)
    {
        var time = new FakeTimeProvider();
        var work = new TaskCompletionSource();
        var cuts = 0;
        var drained = Start(awaitable, time, work.Task, () => Interlocked.Increment(ref cuts), CancellationToken.None);

        await AdvanceAsync(time, TimeSpan.FromSeconds(29), drained);
        Assert.False(drained.IsCompleted);
        work.SetResult();

        Assert.True(await drained.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken));
        Assert.Equal(0, cuts);
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public async Task Work_past_the_timeout_is_cut_on_the_consumers_clock_and_awaited_while_it_unwinds(bool awaitable)
    {
        var time = new FakeTimeProvider();
        var start = time.GetUtcNow();
        var work = new TaskCompletionSource();
        DateTimeOffset? cutAt = null;
        var drained = Start(awaitable, time, work.Task, () => cutAt = time.GetUtcNow(), CancellationToken.None);

        // Advance the fake clock a second at a time until the drain cuts: the cut must not come before the timeout.
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (cutAt is null && DateTime.UtcNow < deadline)
        {
            time.Advance(TimeSpan.FromSeconds(1));
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }

        Assert.NotNull(cutAt);
        Assert.True(cutAt.Value - start >= Timeout, $"cut after {cutAt.Value - start}, before the {Timeout} timeout");

        // The cut work is still unwinding (rolling back): the drain has not returned yet.
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(drained.IsCompleted);
        work.SetException(new OperationCanceledException());

        Assert.False(await drained.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken));
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public async Task An_abort_cuts_at_once_without_waiting_for_the_clock(bool awaitable)
    {
        var time = new FakeTimeProvider();
        var work = new TaskCompletionSource();
        using var abort = new CancellationTokenSource();
        var cuts = 0;
        var drained = Start(awaitable, time, work.Task, () => { Interlocked.Increment(ref cuts); work.TrySetCanceled(); }, abort.Token);

        await Task.Delay(20, TestContext.Current.CancellationToken);
        Assert.Equal(0, cuts);
        await abort.CancelAsync();

        Assert.False(await drained.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken));
        Assert.Equal(1, cuts);
        Assert.Equal(time.Start, time.GetUtcNow());
    }

    [Fact]
    public async Task The_blocking_form_gives_up_on_work_that_never_unwinds_after_the_unwind_limit()
    {
        var time = new FakeTimeProvider();
        var never = new TaskCompletionSource().Task;
        var drain = new ShutdownDrain("test", time, NullLogger.Instance);
        var cuts = 0;
        var drained = Task.Run(() => drain.Drain(never, TimeSpan.Zero, () => Interlocked.Increment(ref cuts), CancellationToken.None, TimeSpan.FromSeconds(30)), TestContext.Current.CancellationToken);

        await AdvanceAsync(time, TimeSpan.FromSeconds(29), drained);
        Assert.False(drained.IsCompleted);
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (!drained.IsCompleted && DateTime.UtcNow < deadline)
        {
            time.Advance(TimeSpan.FromSeconds(1));
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }

        Assert.False(await drained.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken));
        Assert.Equal(1, cuts);
        Assert.False(never.IsCompleted);
    }

    [Theory]
    [MemberData(nameof(Forms))]
    public async Task Faulted_work_counts_as_settled_and_is_not_thrown(bool awaitable)
    {
        var drained = Start(awaitable, new FakeTimeProvider(), Task.FromException(new InvalidOperationException("worker failed")), () => throw new InvalidOperationException("must not cut"), CancellationToken.None);
        Assert.True(await drained.WaitAsync(TimeSpan.FromMinutes(1), TestContext.Current.CancellationToken));
    }

    private static Task<bool> Start(bool awaitable, TimeProvider time, Task work, Action cut, CancellationToken abort)
    {
        var drain = new ShutdownDrain("test", time, NullLogger.Instance);
        return awaitable
            ? drain.DrainAsync(work, Timeout, cut, abort)
            : Task.Run(() => drain.Drain(work, Timeout, cut, abort, TimeSpan.FromMinutes(5)), CancellationToken.None);
    }

    /// <summary>Advances the clock in one-second steps (the blocking form may not have armed its timer yet).</summary>
    private static async Task AdvanceAsync(FakeTimeProvider time, TimeSpan by, Task drained)
    {
        for (var i = 0; i < by.TotalSeconds && !drained.IsCompleted; i++)
        {
            time.Advance(TimeSpan.FromSeconds(1));
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }
    }
}
