namespace Idempotency;

/// <summary>How a failing handler is retried before its message is dead-lettered.</summary>
public sealed class RetryOptions : BackoffOptions
{
    /// <summary>Gets or sets how many times a message is attempted in all, the first attempt included.</summary>
    /// <value>Defaults to 5; between 1 and 1000.</value>
    public int MaxAttempts { get; set; } = 5;

    /// <inheritdoc/>
    public override IEnumerable<string> GetValidationErrors(string prefix)
    {
        foreach (var error in base.GetValidationErrors(prefix))
        {
            yield return error;
        }

        if (MaxAttempts is < 1 or > 1000)
        {
            yield return $"{prefix}.{nameof(MaxAttempts)} must be between 1 and 1000 (was {MaxAttempts}).";
        }
    }
}
