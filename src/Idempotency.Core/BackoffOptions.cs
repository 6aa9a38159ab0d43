namespace Idempotency;

/// <summary>Exponential backoff with full jitter: the n-th delay is random in [d/2, d] where d = min(max, initial * 2^(n-1)).</summary>
public class BackoffOptions
{
    /// <summary>Gets or sets the first delay.</summary>
    /// <value>Defaults to 200 ms; between 0 and <see cref="MaxDelay"/>.</value>
    public TimeSpan InitialDelay { get; set; } = TimeSpan.FromMilliseconds(200);

    /// <summary>Gets or sets the longest delay.</summary>
    /// <value>Defaults to 30 s.</value>
    public TimeSpan MaxDelay { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets a value indicating whether delays are randomised so that many consumers do not retry in step.</summary>
    /// <value>Defaults to <see langword="true"/>.</value>
    public bool UseJitter { get; set; } = true;

    /// <summary>Computes the delay before the given retry.</summary>
    /// <param name="attempt">The 1-based number of the attempt that just failed.</param>
    /// <returns>The delay to wait before the next attempt.</returns>
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
