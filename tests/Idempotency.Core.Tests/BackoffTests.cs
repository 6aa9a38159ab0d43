namespace Idempotency.Core.Tests;

/// <summary>BackoffOptions does what its documentation says: d = min(max, initial * 2^(n-1)), jitter uniform in [d/2, d].</summary>
public class BackoffTests
{
    [Theory]
    [InlineData(1, 100)]
    [InlineData(2, 200)]
    [InlineData(4, 800)]
    [InlineData(5, 1000)]
    [InlineData(40, 1000)]
    public void Without_jitter_the_delay_is_exactly_the_capped_exponential(int attempt, int expectedMs)
    {
        var backoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(1), UseJitter = false };
        Assert.Equal(TimeSpan.FromMilliseconds(expectedMs), backoff.GetDelay(attempt));
    }

    [Fact]
    public void Jitter_is_equal_jitter_never_below_half_and_spread_over_the_upper_half()
    {
        var backoff = new BackoffOptions { InitialDelay = TimeSpan.FromSeconds(1), MaxDelay = TimeSpan.FromSeconds(1) };
        var samples = Enumerable.Range(0, 4000).Select(_ => backoff.GetDelay(1).TotalMilliseconds).ToArray();

        // Never a retry right after the failure (that would be full jitter, [0, d]), never above d.
        Assert.All(samples, ms => Assert.InRange(ms, 500, 1000));
        // Uniform over [d/2, d]: mean near 3d/4, and both quarters of the range are used.
        Assert.InRange(samples.Average(), 730, 770);
        Assert.Contains(samples, ms => ms < 550);
        Assert.Contains(samples, ms => ms > 950);
    }
}
