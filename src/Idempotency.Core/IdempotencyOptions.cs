namespace Idempotency;

/// <summary>Options of one idempotent handler: its scope, key limits, retention and policies.</summary>
/// <remarks>Validate them at start-up with <see cref="Validate"/>; the DI registration does this for you.</remarks>
public sealed class IdempotencyOptions
{
    /// <summary>The longest key any store accepts, in UTF-8 bytes.</summary>
    public const int MaxKeyBytesLimit = 4096;

    /// <summary>Gets or sets the handler (consumer) name that scopes keys, so two handlers never deduplicate each other.</summary>
    /// <value>Required; letters, digits, <c>.</c>, <c>-</c>, <c>_</c> and <c>:</c>, at most 200 characters.</value>
    public string HandlerName { get; set; } = string.Empty;

    /// <summary>Gets or sets the maximum key length in UTF-8 bytes.</summary>
    /// <value>Defaults to 512; between 1 and <see cref="MaxKeyBytesLimit"/>.</value>
    public int MaxKeyBytes { get; set; } = 512;

    /// <summary>Gets or sets how long a processed key is remembered.</summary>
    /// <value>Defaults to 7 days; at least 1 minute. Keep it longer than the broker's redelivery window.</value>
    public TimeSpan Retention { get; set; } = TimeSpan.FromDays(7);

    /// <summary>Gets or sets what happens when a known key arrives with a different payload.</summary>
    /// <value>Defaults to <see cref="PayloadMismatchPolicy.TreatAsDuplicate"/>.</value>
    public PayloadMismatchPolicy PayloadMismatchPolicy { get; set; } = PayloadMismatchPolicy.TreatAsDuplicate;

    /// <summary>Gets or sets when a single message's key is claimed: before the handler runs, or with the commit.</summary>
    /// <value>Defaults to <see cref="ClaimTiming.BeforeHandler"/>. <see cref="ClaimTiming.AtCommit"/> saves a round trip per new message but needs a store that supports it.</value>
    public ClaimTiming ClaimTiming { get; set; } = ClaimTiming.BeforeHandler;

    /// <summary>Gets or sets what happens to a message without a valid key.</summary>
    /// <value>Defaults to <see cref="MissingKeyPolicy.DeadLetter"/>.</value>
    public MissingKeyPolicy MissingKeyPolicy { get; set; } = MissingKeyPolicy.DeadLetter;

    /// <summary>Gets or sets how handler failures are retried before the message is dead-lettered.</summary>
    public RetryOptions Retry { get; set; } = new();

    /// <summary>Gets or sets how long consumption pauses while the store is unreachable.</summary>
    public BackoffOptions StoreUnavailableBackoff { get; set; } = new() { InitialDelay = TimeSpan.FromMilliseconds(500), MaxDelay = TimeSpan.FromSeconds(15) };

    /// <summary>Returns a deep copy, so that a component built from these options is not changed by later edits.</summary>
    /// <returns>The copy.</returns>
    internal IdempotencyOptions Copy()
    {
        var copy = (IdempotencyOptions)MemberwiseClone();
        copy.Retry = (RetryOptions)Retry.Copy();
        copy.StoreUnavailableBackoff = StoreUnavailableBackoff.Copy();
        return copy;
    }

    /// <summary>Checks every option and throws with the name of the first bad one.</summary>
    /// <exception cref="ArgumentException">An option is out of range; the message names it.</exception>
    public void Validate()
    {
        var errors = GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors));
        }
    }

    /// <summary>Returns one message per invalid option, each naming the option.</summary>
    /// <returns>An empty list when the options are valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (!IdentifierRules.IsValidHandlerName(HandlerName))
        {
            errors.Add($"{nameof(HandlerName)} must be 1 to 200 characters of letters, digits, '.', '-', '_' or ':' (was '{HandlerName}').");
        }

        if (MaxKeyBytes is < 1 or > MaxKeyBytesLimit)
        {
            errors.Add($"{nameof(MaxKeyBytes)} must be between 1 and {MaxKeyBytesLimit} (was {MaxKeyBytes}).");
        }

        if (Retention < TimeSpan.FromMinutes(1))
        {
            errors.Add($"{nameof(Retention)} must be at least 1 minute (was {Retention}).");
        }

        if (!Enum.IsDefined(PayloadMismatchPolicy))
        {
            errors.Add($"{nameof(PayloadMismatchPolicy)} has an unknown value {(int)PayloadMismatchPolicy}.");
        }

        if (!Enum.IsDefined(ClaimTiming))
        {
            errors.Add($"{nameof(ClaimTiming)} has an unknown value {(int)ClaimTiming}.");
        }

        if (!Enum.IsDefined(MissingKeyPolicy))
        {
            errors.Add($"{nameof(MissingKeyPolicy)} has an unknown value {(int)MissingKeyPolicy}.");
        }

        if (Retry is null)
        {
            errors.Add($"{nameof(Retry)} must not be null.");
        }
        else
        {
            errors.AddRange(Retry.GetValidationErrors(nameof(Retry)));
        }

        if (StoreUnavailableBackoff is null)
        {
            errors.Add($"{nameof(StoreUnavailableBackoff)} must not be null.");
        }
        else
        {
            errors.AddRange(StoreUnavailableBackoff.GetValidationErrors(nameof(StoreUnavailableBackoff)));
        }

        return errors;
    }
}
