namespace Idempotency.Kafka.Transactions;

/// <summary>Options of a <see cref="KafkaTransactionalProcessor"/>.</summary>
public sealed class KafkaTransactionalOptions
{
    /// <summary>Gets the input topics.</summary>
    /// <value>Empty by default; at least one is required.</value>
    public IList<string> Topics { get; } = [];

    /// <summary>Gets or sets the producer's transactional id: stable per application instance and unique across instances.</summary>
    /// <value>
    /// Required. A restarted instance must come back with the same id, so that its first <c>InitTransactions</c> aborts
    /// what the crashed incarnation left open and fences it. Two live instances with one id fence each other.
    /// </value>
    public string TransactionalId { get; set; } = string.Empty;

    /// <summary>Gets or sets how many input messages one transaction covers at most.</summary>
    /// <value>Defaults to 100; between 1 and 100,000.</value>
    public int BatchSize { get; set; } = 100;

    /// <summary>Gets or sets how long the loop gathers input before committing a smaller transaction.</summary>
    /// <value>Defaults to 100 ms; between 1 ms and 1 minute. Read-committed consumers see outputs only after the commit, so this bounds the added latency.</value>
    public TimeSpan MaxBatchDelay { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Gets or sets the time-out of the blocking transaction calls (init, send offsets, commit, abort).</summary>
    /// <value>Defaults to 30 s; at least 1 s.</value>
    public TimeSpan OperationTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets attempts and backoff for a failing handler: the transaction is aborted, the batch re-read and retried.</summary>
    /// <value>Defaults to 5 attempts, 100 ms to 5 s. After the last attempt the message is written to the dead-letter topic in the next transaction, with its offset.</value>
    public RetryOptions Retry { get; set; } = new() { MaxAttempts = 5, InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(5) };

    /// <summary>Gets or sets the suffix of the dead-letter topic (<c>&lt;input topic&gt;</c> + suffix).</summary>
    /// <value>Defaults to <c>.dlq</c>.</value>
    public string DeadLetterTopicSuffix { get; set; } = ".dlq";

    /// <summary>Returns one message per invalid option, naming it.</summary>
    /// <returns>An empty list when valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (Topics.Count == 0 || Topics.Any(string.IsNullOrWhiteSpace))
        {
            errors.Add($"{nameof(Topics)} must name at least one topic, none empty.");
        }

        if (string.IsNullOrWhiteSpace(TransactionalId))
        {
            errors.Add($"{nameof(TransactionalId)} must be set (stable per instance, unique across instances).");
        }

        if (BatchSize is < 1 or > 100_000)
        {
            errors.Add($"{nameof(BatchSize)} must be between 1 and 100000 (was {BatchSize}).");
        }

        if (MaxBatchDelay < TimeSpan.FromMilliseconds(1) || MaxBatchDelay > TimeSpan.FromMinutes(1))
        {
            errors.Add($"{nameof(MaxBatchDelay)} must be between 1 ms and 1 minute (was {MaxBatchDelay}).");
        }

        if (OperationTimeout < TimeSpan.FromSeconds(1))
        {
            errors.Add($"{nameof(OperationTimeout)} must be at least 1 s (was {OperationTimeout}).");
        }

        if (Retry is null)
        {
            errors.Add($"{nameof(Retry)} must not be null.");
        }
        else
        {
            errors.AddRange(Retry.GetValidationErrors(nameof(Retry)));
        }

        if (string.IsNullOrEmpty(DeadLetterTopicSuffix))
        {
            errors.Add($"{nameof(DeadLetterTopicSuffix)} must not be empty.");
        }

        return errors;
    }
}
