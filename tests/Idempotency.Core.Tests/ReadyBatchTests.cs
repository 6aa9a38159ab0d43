using System.Threading.Channels;
using Idempotency.Delivery;
using Microsoft.Extensions.Time.Testing;

namespace Idempotency.Core.Tests;

/// <summary>Natural batching: what is ready is taken at once, a linger only waits as long as BatchMaxWait on the given clock.</summary>
public sealed class ReadyBatchTests
{
    [Fact]
    public async Task Takes_what_is_ready_up_to_the_size_without_waiting()
    {
        var buffer = Channel.CreateUnbounded<int>();
        for (var i = 0; i < 5; i++)
        {
            buffer.Writer.TryWrite(i);
        }

        var batch = new List<int>();
        await ReadyBatch.FillAsync(buffer.Reader, batch, 3, TimeSpan.Zero, TimeProvider.System, TestContext.Current.CancellationToken);
        Assert.Equal([0, 1, 2], batch);

        batch.Clear();
        await ReadyBatch.FillAsync(buffer.Reader, batch, 3, TimeSpan.Zero, TimeProvider.System, TestContext.Current.CancellationToken);
        Assert.Equal([3, 4], batch);

        batch.Clear();
        await ReadyBatch.FillAsync(buffer.Reader, batch, 3, TimeSpan.FromHours(1), TimeProvider.System, TestContext.Current.CancellationToken);
        Assert.Empty(batch);
    }

    [Fact]
    public async Task Lingers_for_more_until_the_clock_says_the_wait_is_over()
    {
        var time = new FakeTimeProvider();
        var buffer = Channel.CreateUnbounded<int>();
        buffer.Writer.TryWrite(1);
        var batch = new List<int>();

        var filling = ReadyBatch.FillAsync(buffer.Reader, batch, 10, TimeSpan.FromSeconds(5), time, TestContext.Current.CancellationToken).AsTask();
        buffer.Writer.TryWrite(2);
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(filling.IsCompleted);

        time.Advance(TimeSpan.FromSeconds(5));
        await filling.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal([1, 2], batch);
    }

    [Fact]
    public async Task A_stop_ends_the_linger_and_keeps_what_arrived()
    {
        var buffer = Channel.CreateUnbounded<int>();
        buffer.Writer.TryWrite(1);
        var batch = new List<int>();
        using var stopping = new CancellationTokenSource();

        var filling = ReadyBatch.FillAsync(buffer.Reader, batch, 10, TimeSpan.FromHours(1), TimeProvider.System, stopping.Token).AsTask();
        await stopping.CancelAsync();
        await filling.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal([1], batch);
    }
}
