namespace Idempotency;

/// <summary>
/// Exponential backoff with "equal jitter": the n-th delay is d = min(<see cref="MaxDelay"/>, <see cref="InitialDelay"/> * 2^(n-1)),
/// and with <see cref="UseJitter"/> a uniformly random value in [d/2, d].
/// </summary>
/// <remarks>
/// Not "full jitter" (random in [0, d]) on purpose: half of the delay is always kept, so a retry never follows a failure
/// immediately (a store outage or a failing handler is not hammered), while consumers that failed together still spread out
/// over the other half. Without jitter the delay is exactly d.
/// </remarks>
public class BackoffOptions
{
    /// <summary>Gets or sets the first delay.</summary>
    /// <value>Defaults to 200 ms; between 0 and <see cref="MaxDelay"/>.</value>
    public TimeSpan InitialDelay { get; set; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Gets or sets the longest delay.</summary>
    /// <value>Defaults to 30 s.</value>
    public TimeSpan MaxDelay { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets a value indicating whether delays are randomised (uniformly in [d/2, d]) so that many consumers do not retry in step.</summary>
    /// <value>Defaults to <see langword="true"/>.</value>
    public bool UseJitter { get; set; } = true;

    /// <summary>Computes the delay before the given retry.</summary>
    /// <param name="attempt">The 1-based number of the attempt that just failed.</param>
    /// <returns>The delay to wait before the next attempt: d, or random in [d/2, d] with <see cref="UseJitter"/>.</returns>
    public TimeSpan GetDelay(int attempt)
    {
        var exponent = Math.Clamp(attempt - 1, 0, 30);
        var ticks = Math.Min(MaxDelay.Ticks, InitialDelay.Ticks * Math.Pow(2, exponent));
        if (UseJitter)
        {
            // Keep at least half of the delay so a retry never comes immediately after a failure.
            ticks = (ticks / 2) + (Random.Shared.NextDouble() * ticks / 2);
        }

        return TimeSpan.FromTicks((long)ticks);
    }

    /// <summary>Returns a copy that later changes to this instance do not affect.</summary>
    /// <returns>The copy, of the same type.</returns>
    internal BackoffOptions Copy() => (BackoffOptions)MemberwiseClone();

    /// <summary>Returns one message per invalid option, prefixed with <paramref name="prefix"/>.</summary>
    /// <param name="prefix">The name of the property holding these options.</param>
    /// <returns>An empty list when valid.</returns>
    public virtual IEnumerable<string> GetValidationErrors(string prefix)
    {
        if (InitialDelay < TimeSpan.Zero)
        {
            yield return $"{prefix}.{nameof(InitialDelay)} must not be negative (was {InitialDelay}).";
        }

        if (MaxDelay < InitialDelay)
        {
            yield return $"{prefix}.{nameof(MaxDelay)} must be at least {prefix}.{nameof(InitialDelay)} (was {MaxDelay}).";
        }
    }
}
