using System.Globalization;
using Amazon.SQS.Model;

namespace Idempotency.Sqs;

/// <summary>Options of an <see cref="IdempotentSqsWorker"/>: the queue, how it is polled, visibility and dead-lettering.</summary>
/// <remarks>
/// Mutable; validated when the worker is created (<see cref="Validate"/>), and every error names the setting.
/// The handler's own options (retries, missing-key and payload-mismatch policies) live in <see cref="IdempotencyOptions"/>.
/// </remarks>
public sealed class SqsIdempotencyOptions
{
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

    /// <summary>Gets or sets how many messages one receive asks for.</summary>
    /// <value>Defaults to 10; between 1 and 10 (the SQS limit).</value>
    public int MaxMessages { get; set; } = 10;

    /// <summary>Gets or sets how many receive loops run concurrently; each handles its own batch.</summary>
    /// <value>Defaults to 2; between 1 and 100.</value>
    public int Pollers { get; set; } = 2;

    /// <summary>Gets or sets the visibility timeout requested on receive and renewed by the heartbeat.</summary>
    /// <value>Defaults to 30 seconds; between 1 second and 12 hours, rounded up to whole seconds.</value>
    public TimeSpan VisibilityTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets the fraction of <see cref="VisibilityTimeout"/> after which a batch still running gets its visibility extended, and the period of later extensions.</summary>
    /// <value>Defaults to 0.5; between 0.1 and 0.9.</value>
    public double HeartbeatFraction { get; set; } = 0.5;

    /// <summary>Gets or sets a value indicating whether each received batch is processed in one store transaction (Core's batch path) instead of one transaction per message.</summary>
    /// <value>Defaults to <see langword="true"/> (measured faster; see docs/sqs.md).</value>
    public bool BatchProcessing { get; set; } = true;

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

    /// <summary>Gets or sets how long in-flight batches may run after stop is requested before they are cancelled and their messages released.</summary>
    /// <value>Defaults to 30 seconds; between 0 and 1 hour.</value>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets how long a poller waits after a failed receive before trying again.</summary>
    /// <value>Defaults to 1 second; between 0 and 5 minutes.</value>
    public TimeSpan ReceiveErrorDelay { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Gets a value indicating whether <see cref="QueueUrl"/> names a FIFO queue.</summary>
    public bool IsFifoQueue => QueueUrl.EndsWith(".fifo", StringComparison.Ordinal);

    internal int VisibilityTimeoutSeconds => (int)Math.Ceiling(VisibilityTimeout.TotalSeconds);

    /// <summary>Checks every option and throws with the names of the bad ones.</summary>
    /// <exception cref="ArgumentException">An option is invalid; the message names it.</exception>
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

        if (Pollers is < 1 or > 100)
        {
            errors.Add(Range(nameof(Pollers), "between 1 and 100", Pollers));
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

        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromHours(1))
        {
            errors.Add(Range(nameof(ShutdownTimeout), "between 0 and 1 hour", ShutdownTimeout));
        }

        if (ReceiveErrorDelay < TimeSpan.Zero || ReceiveErrorDelay > TimeSpan.FromMinutes(5))
        {
            errors.Add(Range(nameof(ReceiveErrorDelay), "between 0 and 5 minutes", ReceiveErrorDelay));
        }

        return errors;
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
