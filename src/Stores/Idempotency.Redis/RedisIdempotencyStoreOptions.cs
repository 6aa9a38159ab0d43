namespace Idempotency.Redis;

/// <summary>Options of the Redis store (and of the Redis layer of the layered store).</summary>
/// <remarks>Validate them at start-up with <see cref="Validate"/>; the stores' constructors do.</remarks>
public sealed class RedisIdempotencyStoreOptions
{
    /// <summary>The shortest <see cref="Retention"/> accepted: keys must outlive the broker's redelivery window.</summary>
    public static readonly TimeSpan MinimumRetention = TimeSpan.FromHours(24);

    /// <summary>Gets or sets the prefix of every key the store writes, one per application, so applications sharing a Redis never see each other's keys.</summary>
    /// <value>Required; 1 to 100 characters, no whitespace, no <c>{</c> or <c>}</c> (those delimit Redis Cluster hash tags).</value>
    public string KeyPrefix { get; set; } = string.Empty;

    /// <summary>Gets or sets how long a completed key is remembered (the TTL of its record).</summary>
    /// <value>Defaults to 7 days; at least 24 hours. Keep it longer than the broker's redelivery and retry window.</value>
    /// <remarks>This, not <c>IdempotencyOptions.Retention</c>, is the TTL the Redis store sets; the store reports it as its
    /// <c>EnforcedRetention</c>, which the adapters' start-up retention check compares with the broker's horizon.</remarks>
    public TimeSpan Retention { get; set; } = TimeSpan.FromDays(7);

    /// <summary>Gets or sets how long a claim (an in-progress lease) lasts before another worker may take the key over.</summary>
    /// <value>Defaults to 30 seconds; more than zero and less than <see cref="Retention"/>. Keep it well above the handler's worst-case run time.</value>
    public TimeSpan LeaseDuration { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets a value indicating whether the handler's result (<c>MessageContext.Result</c>) is stored with the key so a duplicate can return it.</summary>
    /// <value>Defaults to <see langword="true"/>.</value>
    public bool StoreResults { get; set; } = true;

    /// <summary>Gets or sets the Redis database number.</summary>
    /// <value>Defaults to -1, the connection's default database.</value>
    public int Database { get; set; } = -1;

    /// <summary>
    /// Gets or sets how many replicas must acknowledge a commit (Redis <c>WAIT</c> on the primary that holds it) before
    /// the store reports it committed, so the message is acknowledged only once a failover to one of those replicas
    /// keeps it.
    /// </summary>
    /// <value>Defaults to 0: no wait (Redis replicates asynchronously; a failover can lose the last commits, see
    /// docs/redis.md). 0 to 16.</value>
    /// <remarks>
    /// <c>WAIT</c> blocks the connection it is sent on (the multiplexer's one connection to that primary) until the
    /// replicas answered, so commands behind it wait too; fewer acknowledgements within <see cref="ReplicaWaitTimeout"/>
    /// are reported as an outage (the message is not acknowledged; its redelivery finds the commit, or runs again if
    /// a failover lost it).
    /// </remarks>
    public int WaitForReplicas { get; set; }

    /// <summary>Gets or sets how long a commit waits for <see cref="WaitForReplicas"/> acknowledgements.</summary>
    /// <value>Defaults to 1 second; 1 ms to 1 minute.</value>
    public TimeSpan ReplicaWaitTimeout { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Gets or sets the smallest retention accepted; tests lower it to exercise expiry in seconds.</summary>
    internal TimeSpan RetentionFloor { get; set; } = MinimumRetention;

    /// <summary>Returns one message per invalid option, each naming the option.</summary>
    /// <returns>An empty list when the options are valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (string.IsNullOrEmpty(KeyPrefix))
        {
            errors.Add($"{nameof(KeyPrefix)} is required: set a prefix per application (e.g. \"billing\") so its keys never collide with another application's.");
        }
        else if (KeyPrefix.Length > 100 || KeyPrefix.Any(c => char.IsWhiteSpace(c) || c is '{' or '}'))
        {
            errors.Add($"{nameof(KeyPrefix)} must be 1 to 100 characters without whitespace, '{{' or '}}' (was '{KeyPrefix}').");
        }

        if (Retention <= TimeSpan.Zero)
        {
            errors.Add($"{nameof(Retention)} must be positive (was {Retention}).");
        }
        else if (Retention < RetentionFloor)
        {
            errors.Add($"{nameof(Retention)} must be at least {RetentionFloor.TotalHours:0.##} hours so keys outlive the broker's redelivery window (was {Retention}).");
        }

        if (LeaseDuration <= TimeSpan.Zero)
        {
            errors.Add($"{nameof(LeaseDuration)} must be positive (was {LeaseDuration}).");
        }
        else if (LeaseDuration < TimeSpan.FromMilliseconds(1) || (Retention > TimeSpan.Zero && LeaseDuration >= Retention))
        {
            errors.Add($"{nameof(LeaseDuration)} must be at least 1 ms and shorter than {nameof(Retention)} (was {LeaseDuration}).");
        }

        if (WaitForReplicas is < 0 or > 16)
        {
            errors.Add($"{nameof(WaitForReplicas)} must be 0 (no wait) to 16 (was {WaitForReplicas}).");
        }

        if (ReplicaWaitTimeout < TimeSpan.FromMilliseconds(1) || ReplicaWaitTimeout > TimeSpan.FromMinutes(1))
        {
            errors.Add($"{nameof(ReplicaWaitTimeout)} must be between 1 ms and 1 minute (was {ReplicaWaitTimeout}).");
        }

        if (Database < -1)
        {
            errors.Add($"{nameof(Database)} must be -1 (the connection's default) or a database number (was {Database}).");
        }

        return errors;
    }

    /// <summary>Throws when an option is invalid.</summary>
    /// <exception cref="ArgumentException">An option is invalid; the message names it.</exception>
    public void Validate()
    {
        var errors = GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors));
        }
    }
}
