using Idempotency.Health;
using Microsoft.Extensions.Time.Testing;

namespace Idempotency.Core.Tests;

/// <summary>The start and stop marks every adapter puts on its heartbeat, as the health check reads them.</summary>
public sealed class ConsumerHeartbeatTests
{
    [Fact]
    public void Started_clears_a_previous_stop_and_beats_stopped_names_the_failure()
    {
        var time = new FakeTimeProvider(DateTimeOffset.Parse("2026-01-01T00:00:00Z", System.Globalization.CultureInfo.InvariantCulture));
        var heartbeat = new ConsumerHealthRegistry().Register("sqs:orders", time);
        heartbeat.MarkStopped(new InvalidOperationException("queue gone"));
        Assert.Equal(ConsumerState.Stopped, heartbeat.State);
        Assert.Equal("stopped: InvalidOperationException: queue gone", heartbeat.Detail);

        time.Advance(TimeSpan.FromMinutes(5));
        heartbeat.MarkStarted();
        Assert.Equal(ConsumerState.Running, heartbeat.State);
        Assert.Null(heartbeat.Detail);
        Assert.Equal(time.GetUtcNow(), heartbeat.LastBeat);

        heartbeat.MarkStopped();
        Assert.Equal(ConsumerState.Stopped, heartbeat.State);
        Assert.Equal("stopped", heartbeat.Detail);
    }
}
