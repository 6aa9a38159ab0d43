using System.Globalization;
using Amazon.SQS.Model;

namespace Idempotency.Sqs;

/// <summary>
/// Options of an <see cref="IdempotentSqsWorker"/>: the queue, how it is polled, visibility and dead-lettering, plus the
/// settings every consumer shares (<see cref="IdempotentConsumerOptions.Concurrency"/> is the number of pollers,
/// <see cref="IdempotentConsumerOptions.BatchSize"/> how many messages of one receive share a store transaction).
/// </summary>
/// <remarks>
/// Mutable; validated when the worker is created (<see cref="IdempotentConsumerOptions.Validate"/>), and every error names
/// the setting. The handler's own options (retries, missing-key and payload-mismatch policies) live in <see cref="IdempotencyOptions"/>.
/// </remarks>
public sealed class SqsIdempotencyOptions : IdempotentConsumerOptions
{
    /// <summary>The most messages one SQS receive returns, hence the largest <see cref="IdempotentConsumerOptions.BatchSize"/>.</summary>
    public const int MaxReceiveMessages = 10;

    /// <summary>The largest number of pollers (<see cref="IdempotentConsumerOptions.Concurrency"/>).</summary>
    public const int MaxPollers = 100;

    /// <summary>The default message attribute that carries the idempotency key.</summary>
    public const string DefaultKeyAttributeName = "IdempotencyKey";

    /// <summary>The longest visibility timeout SQS accepts.</summary>
    public static readonly TimeSpan MaxVisibilityTimeout = TimeSpan.FromHours(12);

    /// <summary>Gets or sets the URL of the queue to consume.</summary>
    /// <value>Required. Use the URL that <c>CreateQueue</c> or <c>GetQueueUrl</c> returned, not one built by hand.</value>
    public string QueueUrl { get; set; } = string.Empty;

    /// <summary>Gets or sets how long one receive waits for messages (long polling).</summary>
    /// <value>Defaults to 20 seconds; between 0 and 20.</value>
    public int WaitTimeSeconds { get; set; } = 20;

    /// <summary>Creates options with the SQS defaults: two pollers, and up to ten messages (a whole receive) per store transaction.</summary>
    public SqsIdempotencyOptions()
    {
        Concurrency = 2;
        BatchSize = MaxReceiveMessages;
    }

    /// <summary>Gets or sets how many messages one receive asks for.</summary>
    /// <value>Defaults to 10; between 1 and 10 (the SQS limit).</value>
    public int MaxMessages { get; set; } = MaxReceiveMessages;

    /// <summary>Gets or sets how many receive loops run concurrently; an alias of <see cref="IdempotentConsumerOptions.Concurrency"/>.</summary>
    [Obsolete("Use Concurrency (the same setting under the name every consumer shares).")]
    public int Pollers
    {
        get => Concurrency;
        set => Concurrency = value;
    }

    /// <summary>Gets or sets the visibility timeout requested on receive and renewed by the heartbeat.</summary>
    /// <value>Defaults to 30 seconds; between 1 second and 12 hours, rounded up to whole seconds.</value>
    public TimeSpan VisibilityTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets the fraction of <see cref="VisibilityTimeout"/> after which a batch still running gets its visibility extended, and the period of later extensions.</summary>
    /// <value>Defaults to 0.5; between 0.1 and 0.9.</value>
    public double HeartbeatFraction { get; set; } = 0.5;

    /// <summary>
    /// Gets or sets a value indicating whether the messages of one receive share a store transaction; an alias of
    /// <see cref="IdempotentConsumerOptions.BatchSize"/> greater than 1 (<see langword="false"/> sets it to 1, <see langword="true"/> to 10).
    /// </summary>
    [Obsolete("Use BatchSize (1 turns natural batching off).")]
    public bool BatchProcessing
    {
        get => BatchSize > 1;
        set => BatchSize = value ? MaxReceiveMessages : 1;
    }

    /// <summary>Gets or sets the URL of the queue dead-lettered messages are sent to, with the reason in their attributes, before they are deleted.</summary>
    /// <value>Defaults to <see langword="null"/>: dead-lettering is left to the queue's <c>RedrivePolicy</c> (the message is made visible again until SQS moves it after <c>maxReceiveCount</c> receives).</value>
    public string? DeadLetterQueueUrl { get; set; }

    /// <summary>Gets or sets the message attribute that carries the idempotency key; <see langword="null"/> skips it.</summary>
    /// <value>Defaults to <see cref="DefaultKeyAttributeName"/>.</value>
    public string? KeyAttributeName { get; set; } = DefaultKeyAttributeName;

    /// <summary>Gets or sets a value indicating whether a FIFO queue's <c>MessageDeduplicationId</c> is the key when the attribute is missing.</summary>
    /// <value>Defaults to <see langword="true"/>.</value>
    public bool UseDeduplicationIdOnFifo { get; set; } = true;

    /// <summary>Gets or sets a selector that derives the key from the message (for example from its body) when the attribute and deduplication id give none.</summary>
    /// <value>Defaults to <see langword="null"/>.</value>
    public Func<Message, string?>? KeySelector { get; set; }

    /// <summary>Gets or sets a value indicating whether the SQS <c>MessageId</c> is the last-resort key.</summary>
    /// <value>Defaults to <see langword="false"/>: a producer that sends the same thing twice gets two message ids, so this only removes redeliveries of one send.</value>
    public bool UseMessageIdAsKey { get; set; }

    /// <summary>Gets or sets how long a poller waits after a failed receive before trying again.</summary>
    /// <value>Defaults to 1 second; between 0 and 5 minutes.</value>
    public TimeSpan ReceiveErrorDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Gets a value indicating whether <see cref="QueueUrl"/> names a FIFO queue.</summary>
    public bool IsFifoQueue => QueueUrl.EndsWith(".fifo", StringComparison.Ordinal);

    internal int VisibilityTimeoutSeconds => (int)Math.Ceiling(VisibilityTimeout.TotalSeconds);

    /// <inheritdoc/>
    protected override void AddValidationErrors(IList<string> errors)
    {
        base.AddValidationErrors(errors);
        if (Concurrency > MaxPollers)
        {
            errors.Add(Range(nameof(Concurrency), $"between 1 and {MaxPollers} pollers", Concurrency));
        }

        if (BatchSize > MaxReceiveMessages)
        {
            errors.Add(Range(nameof(BatchSize), $"between 1 and {MaxReceiveMessages} (an SQS receive holds at most {MaxReceiveMessages} messages)", BatchSize));
        }

        if (BatchMaxWait != TimeSpan.Zero)
        {
            errors.Add($"{nameof(BatchMaxWait)} must be zero on SQS: a receive is the batch, and {nameof(WaitTimeSeconds)} (long polling) already waits for messages (was {BatchMaxWait}).");
        }

        if (!IsAbsoluteUrl(QueueUrl))
        {
            errors.Add($"{nameof(QueueUrl)} must be an absolute http(s) queue URL as returned by CreateQueue or GetQueueUrl (was '{QueueUrl}').");
        }

        if (WaitTimeSeconds is < 0 or > 20)
        {
            errors.Add(Range(nameof(WaitTimeSeconds), "between 0 and 20", WaitTimeSeconds));
        }

        if (MaxMessages is < 1 or > 10)
        {
            errors.Add(Range(nameof(MaxMessages), "between 1 and 10", MaxMessages));
        }

        if (VisibilityTimeout < TimeSpan.FromSeconds(1) || VisibilityTimeout > MaxVisibilityTimeout)
        {
            errors.Add(Range(nameof(VisibilityTimeout), "between 1 second and 12 hours", VisibilityTimeout));
        }

        if (double.IsNaN(HeartbeatFraction) || HeartbeatFraction is < 0.1 or > 0.9)
        {
            errors.Add(Range(nameof(HeartbeatFraction), "between 0.1 and 0.9", HeartbeatFraction));
        }

        if (DeadLetterQueueUrl is not null)
        {
            if (!IsAbsoluteUrl(DeadLetterQueueUrl))
            {
                errors.Add($"{nameof(DeadLetterQueueUrl)} must be an absolute http(s) queue URL or null (was '{DeadLetterQueueUrl}').");
            }
            else if (string.Equals(DeadLetterQueueUrl, QueueUrl, StringComparison.Ordinal))
            {
                errors.Add($"{nameof(DeadLetterQueueUrl)} must differ from {nameof(QueueUrl)}.");
            }
        }

        if (KeyAttributeName is not null && !IsValidAttributeName(KeyAttributeName))
        {
            errors.Add($"{nameof(KeyAttributeName)} must be 1 to 256 characters of letters, digits, '-', '_' or '.', not starting with 'AWS.' or 'Amazon.' (was '{KeyAttributeName}').");
        }

        var hasKeySource = KeyAttributeName is not null || KeySelector is not null || UseMessageIdAsKey || (UseDeduplicationIdOnFifo && IsFifoQueue);
        if (!hasKeySource)
        {
            errors.Add($"No key source: set {nameof(KeyAttributeName)}, {nameof(KeySelector)} or {nameof(UseMessageIdAsKey)} (or {nameof(UseDeduplicationIdOnFifo)} on a FIFO queue).");
        }

        if (ReceiveErrorDelay < TimeSpan.Zero || ReceiveErrorDelay > TimeSpan.FromMinutes(5))
        {
            errors.Add(Range(nameof(ReceiveErrorDelay), "between 0 and 5 minutes", ReceiveErrorDelay));
        }
    }

    private static string Range(string name, string range, IFormattable value) =>
        $"{name} must be {range} (was {value.ToString(null, CultureInfo.InvariantCulture)}).";

    private static bool IsAbsoluteUrl(string? value) =>
        Uri.TryCreate(value, UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps);

    private static bool IsValidAttributeName(string name)
    {
        if (name.Length is < 1 or > 256 || name.StartsWith("AWS.", StringComparison.OrdinalIgnoreCase) || name.StartsWith("Amazon.", StringComparison.OrdinalIgnoreCase) ||
            name[0] == '.' || name[^1] == '.' || name.Contains("..", StringComparison.Ordinal))
        {
            return false;
        }

        foreach (var c in name)
        {
            if (!char.IsAsciiLetterOrDigit(c) && c is not ('-' or '_' or '.'))
            {
                return false;
            }
        }

        return true;
    }
}
