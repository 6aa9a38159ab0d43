namespace Idempotency.Postgres.Retention;

/// <summary>How the pruning service deletes expired keys.</summary>
public sealed class PostgresRetentionOptions
{
    /// <summary>Gets or sets how often a pruning run starts.</summary>
    /// <value>Defaults to 5 minutes; at least 1 second.</value>
    public TimeSpan Interval { get; set; } = TimeSpan.FromMinutes(5);

    /// <summary>Gets or sets how many rows one delete transaction removes; small batches keep locks short.</summary>
    /// <value>Defaults to 5,000; between 1 and 100,000.</value>
    public int BatchSize { get; set; } = 5_000;

    /// <summary>Gets or sets the pause between two batches, which leaves the database to the consumers.</summary>
    /// <value>Defaults to 20 ms; not negative.</value>
    public TimeSpan PauseBetweenBatches { get; set; } = TimeSpan.FromMilliseconds(20);

    /// <summary>Gets or sets the most batches one run deletes before waiting for the next interval.</summary>
    /// <value>Defaults to 10,000.</value>
    public int MaxBatchesPerRun { get; set; } = 10_000;

    /// <summary>Returns one message per invalid option, naming it.</summary>
    /// <returns>An empty list when valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (Interval < TimeSpan.FromSeconds(1))
        {
            errors.Add($"{nameof(Interval)} must be at least 1 second (was {Interval}).");
        }

        if (BatchSize is < 1 or > 100_000)
        {
            errors.Add($"{nameof(BatchSize)} must be between 1 and 100000 (was {BatchSize}).");
        }

        if (PauseBetweenBatches < TimeSpan.Zero)
        {
            errors.Add($"{nameof(PauseBetweenBatches)} must not be negative (was {PauseBetweenBatches}).");
        }

        if (MaxBatchesPerRun < 1)
        {
            errors.Add($"{nameof(MaxBatchesPerRun)} must be at least 1 (was {MaxBatchesPerRun}).");
        }

        return errors;
    }
}
