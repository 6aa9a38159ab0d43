namespace Idempotency.Postgres.Outbox;

/// <summary>How the outbox relay reads, publishes and cleans up.</summary>
public sealed class PostgresOutboxRelayOptions
{
    /// <summary>Gets or sets how many messages one relay transaction publishes.</summary>
    /// <value>Defaults to 500 (measured on the in-process Kafka mock: 100 left the relay at 0.37x of direct publishing in batches of 100, 500 reaches 0.9x of that; see docs/outbox.md); between 1 and 10,000.</value>
    public int BatchSize { get; set; } = 500;

    /// <summary>Gets or sets how many batches one relay publishes at a time (each on its own connection).</summary>
    /// <value>Defaults to 2; between 1 and 64. Batches are taken with <c>FOR UPDATE SKIP LOCKED</c> and a row waits while an older row of its key is in another batch, so per-key order holds for any number, as it does across relay instances. Within a batch, publishing and marking are sequential: more workers overlap one batch's publish with another's database work.</value>
    public int Workers { get; set; } = 2;

    /// <summary>Gets or sets how long the relay waits for a commit notification before it looks anyway.</summary>
    /// <value>Defaults to 5 s; at least 10 ms. LISTEN/NOTIFY wakes it at once after each commit; this is the safety net.</value>
    public TimeSpan PollInterval { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>Gets or sets the backoff after a publish or database failure.</summary>
    public BackoffOptions FailureBackoff { get; set; } = new() { InitialDelay = TimeSpan.FromMilliseconds(200), MaxDelay = TimeSpan.FromSeconds(30) };

    /// <summary>Gets or sets how long sent rows are kept before cleanup deletes them.</summary>
    /// <value>Defaults to 1 day; not negative.</value>
    public TimeSpan KeepSentFor { get; set; } = TimeSpan.FromDays(1);

    /// <summary>Gets or sets how often cleanup runs.</summary>
    /// <value>Defaults to 10 minutes; at least 1 second.</value>
    public TimeSpan CleanupInterval { get; set; } = TimeSpan.FromMinutes(10);

    /// <summary>Gets or sets how many sent rows one cleanup statement deletes.</summary>
    /// <value>Defaults to 5,000; at least 1.</value>
    public int CleanupBatchSize { get; set; } = 5_000;

    /// <summary>Returns one message per invalid option, naming it.</summary>
    /// <returns>An empty list when valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (BatchSize is < 1 or > 10_000)
        {
            errors.Add($"{nameof(BatchSize)} must be between 1 and 10000 (was {BatchSize}).");
        }

        if (Workers is < 1 or > 64)
        {
            errors.Add($"{nameof(Workers)} must be between 1 and 64 (was {Workers}).");
        }

        if (PollInterval < TimeSpan.FromMilliseconds(10))
        {
            errors.Add($"{nameof(PollInterval)} must be at least 10 ms (was {PollInterval}).");
        }

        if (FailureBackoff is null)
        {
            errors.Add($"{nameof(FailureBackoff)} must not be null.");
        }
        else
        {
            errors.AddRange(FailureBackoff.GetValidationErrors(nameof(FailureBackoff)));
        }

        if (KeepSentFor < TimeSpan.Zero)
        {
            errors.Add($"{nameof(KeepSentFor)} must not be negative (was {KeepSentFor}).");
        }

        if (CleanupInterval < TimeSpan.FromSeconds(1))
        {
            errors.Add($"{nameof(CleanupInterval)} must be at least 1 second (was {CleanupInterval}).");
        }

        if (CleanupBatchSize < 1)
        {
            errors.Add($"{nameof(CleanupBatchSize)} must be at least 1 (was {CleanupBatchSize}).");
        }

        return errors;
    }
}
