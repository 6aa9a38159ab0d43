using System.ComponentModel;
using System.Globalization;
using Confluent.Kafka;

namespace Idempotency.Kafka;

/// <summary>
/// Options of an <see cref="IdempotentKafkaConsumer{TKey, TValue}"/>: the settings every consumer shares
/// (<see cref="IdempotentConsumerOptions.Concurrency"/> is how many partitions are processed at once, batching, shutdown,
/// key encoding, observers) plus Kafka's own: where the key comes from, how offsets are committed, dead-letter topics
/// and time-outs.
/// </summary>
/// <remarks>
/// Mutable; validated once when the consumer is created (<see cref="IdempotentConsumerOptions.Validate"/>). Binds from
/// configuration (<c>AddKafkaConsumer</c> with a section). Use <see cref="KafkaIdempotencyOptions{TKey, TValue}"/> to
/// set a key or body selector.
/// </remarks>
public class KafkaIdempotencyOptions : IdempotentConsumerOptions
{
    /// <summary>Initializes a new instance with Kafka's defaults (16 partitions at once, batches of up to 100).</summary>
    public KafkaIdempotencyOptions()
    {
        Concurrency = 16;
    }

    /// <summary>The default header that carries the idempotency key.</summary>
    public const string DefaultKeyHeader = "idempotency-key";

    /// <summary>Gets the topics to subscribe to when the consumer starts.</summary>
    /// <value>Empty by default: then the consumer must already be subscribed (or assigned) when it is wrapped.</value>
    public IList<string> Topics { get; } = [];

    /// <summary>Gets or sets the header whose UTF-8 value is the idempotency key (used when no key selector is set).</summary>
    /// <value>Defaults to <c>idempotency-key</c>.</value>
    public string KeyHeader { get; set; } = DefaultKeyHeader;

    /// <summary>Gets or sets the suffix appended to a message's topic to name its dead-letter topic.</summary>
    /// <value>Defaults to <c>.dlq</c>; ignored when <see cref="DeadLetterTopic"/> is set.</value>
    public string DeadLetterTopicSuffix { get; set; } = ".dlq";

    /// <summary>Gets or sets one dead-letter topic for every source topic.</summary>
    /// <value>Defaults to <see langword="null"/>: <c>&lt;topic&gt;</c> + <see cref="DeadLetterTopicSuffix"/>.</value>
    public string? DeadLetterTopic { get; set; }

    /// <summary>Gets or sets how many partitions are processed at the same time: the same as <see cref="IdempotentConsumerOptions.Concurrency"/>.</summary>
    /// <value>Forwards to <see cref="IdempotentConsumerOptions.Concurrency"/> (16 by default).</value>
    [Obsolete("Use Concurrency, the name every consumer shares.")]
    [EditorBrowsable(EditorBrowsableState.Never)]
    public int MaxConcurrentPartitions
    {
        get => Concurrency;
        set => Concurrency = value;
    }

    /// <summary>Gets or sets how many fetched messages a partition may have waiting before it is paused at the broker.</summary>
    /// <value>Defaults to 1000; between 1 and 1,000,000. It is resumed when half of them are processed.</value>
    public int MaxBufferedMessagesPerPartition { get; set; } = 1000;

    /// <summary>Gets or sets after how many completed messages the offsets are committed (one commit for all partitions).</summary>
    /// <value>
    /// Defaults to 500; at least 1. Commits are lazy on purpose: a message whose offset was not committed yet is
    /// redelivered after a crash or rebalance, and its redelivery is a duplicate that is skipped.
    /// </value>
    public int CommitEveryMessages { get; set; } = 500;

    /// <summary>Gets or sets the longest time completed messages wait for their offset commit.</summary>
    /// <value>Defaults to 1 s; between 1 ms and 1 hour.</value>
    public TimeSpan CommitInterval { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Gets or sets how long revoked partitions may finish the message or batch in flight before it is cancelled (rolled back).</summary>
    /// <value>Defaults to 10 s; between 0 and 5 minutes. Keep it well under the group's <c>max.poll.interval.ms</c>.</value>
    public TimeSpan RevokeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Gets or sets how long one <c>Consume</c> call waits for a message; commits and pauses happen between calls.</summary>
    /// <value>Defaults to 100 ms; between 1 ms and 10 s.</value>
    public TimeSpan PollTimeout { get; set; } = TimeSpan.FromMilliseconds(100);

    /// <summary>Gets or sets where the group's offsets are kept.</summary>
    /// <value>
    /// Defaults to <see cref="KafkaOffsetStorage.Broker"/>. <see cref="KafkaOffsetStorage.BrokerAndStore"/> needs a store
    /// implementing <see cref="Idempotency.Storage.IConsumerPositionStore"/> (PostgreSQL) and a consumer built by
    /// <see cref="IdempotentKafkaConsumer{TKey, TValue}.Create"/> (it seeks in the wrapper's assignment handler).
    /// </value>
    public KafkaOffsetStorage OffsetStorage { get; set; } = KafkaOffsetStorage.Broker;

    /// <summary>Gets or sets how dead-letter produce failures are retried (the message's offset waits until the dead-letter is acknowledged).</summary>
    public BackoffOptions DeadLetterProduceBackoff { get; set; } = new() { InitialDelay = TimeSpan.FromMilliseconds(200), MaxDelay = TimeSpan.FromSeconds(10) };

    /// <inheritdoc/>
    protected override void AddValidationErrors(IList<string> errors)
    {
        base.AddValidationErrors(errors);
        for (var i = 0; i < Topics.Count; i++)
        {
            if (string.IsNullOrWhiteSpace(Topics[i]))
            {
                errors.Add($"{nameof(Topics)}[{i}] must not be empty.");
            }
        }

        if (string.IsNullOrWhiteSpace(KeyHeader))
        {
            errors.Add($"{nameof(KeyHeader)} must not be empty.");
        }

        if (DeadLetterTopic is null && string.IsNullOrEmpty(DeadLetterTopicSuffix))
        {
            errors.Add($"{nameof(DeadLetterTopicSuffix)} must not be empty when {nameof(DeadLetterTopic)} is not set (the dead-letter topic would be the source topic).");
        }

        if (DeadLetterTopic is not null && string.IsNullOrWhiteSpace(DeadLetterTopic))
        {
            errors.Add($"{nameof(DeadLetterTopic)} must be null or a topic name.");
        }

        AddDeadLetterLoopErrors(errors);

        Range(errors, nameof(MaxBufferedMessagesPerPartition), MaxBufferedMessagesPerPartition, 1, 1_000_000);
        Range(errors, nameof(CommitEveryMessages), CommitEveryMessages, 1, int.MaxValue);
        Range(errors, nameof(CommitInterval), CommitInterval, TimeSpan.FromMilliseconds(1), TimeSpan.FromHours(1));
        Range(errors, nameof(RevokeTimeout), RevokeTimeout, TimeSpan.Zero, TimeSpan.FromMinutes(5));
        Range(errors, nameof(PollTimeout), PollTimeout, TimeSpan.FromMilliseconds(1), TimeSpan.FromSeconds(10));
        if (!Enum.IsDefined(OffsetStorage))
        {
            errors.Add($"{nameof(OffsetStorage)} must be Broker or BrokerAndStore (was {(int)OffsetStorage}).");
        }

        if (DeadLetterProduceBackoff is null)
        {
            errors.Add($"{nameof(DeadLetterProduceBackoff)} must not be null.");
        }
        else
        {
            foreach (var error in DeadLetterProduceBackoff.GetValidationErrors(nameof(DeadLetterProduceBackoff)))
            {
                errors.Add(error);
            }
        }
    }

    /// <summary>Gets the dead-letter topic for a source topic.</summary>
    /// <param name="topic">The source topic.</param>
    /// <returns>The dead-letter topic.</returns>
    public string GetDeadLetterTopic(string topic) => DeadLetterTopic ?? topic + DeadLetterTopicSuffix;

    /// <summary>
    /// A <see cref="DeadLetterTopic"/> that is subscribed is its own dead-letter topic: its poison messages would be read
    /// again and dead-lettered into it forever. (A suffix cannot loop: each hop makes a longer name, so consuming your
    /// dead-letter topic too, such as <c>orders.dlq</c> next to <c>orders</c>, ends at <c>orders.dlq.dlq</c>.)
    /// </summary>
    private void AddDeadLetterLoopErrors(IList<string> errors)
    {
        // Topic names are case-sensitive in Kafka.
        if (DeadLetterTopic is not null && Topics.Contains(DeadLetterTopic, StringComparer.Ordinal))
        {
            errors.Add($"{nameof(Topics)} subscribes to '{DeadLetterTopic}', the {nameof(DeadLetterTopic)} of every topic, so also its own: failed messages would be read again and fail forever. Choose a dead-letter topic that is not subscribed.");
        }
    }

    private static void Range(IList<string> errors, string name, int value, int min, int max)
    {
        if (value < min || value > max)
        {
            errors.Add(string.Create(CultureInfo.InvariantCulture, $"{name} must be between {min} and {max} (was {value})."));
        }
    }

    private static void Range(IList<string> errors, string name, TimeSpan value, TimeSpan min, TimeSpan max)
    {
        if (value < min || value > max)
        {
            errors.Add(string.Create(CultureInfo.InvariantCulture, $"{name} must be between {min} and {max} (was {value})."));
        }
    }
}

/// <summary>Kafka options with selectors typed for the consumer's key and value.</summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
public sealed class KafkaIdempotencyOptions<TKey, TValue> : KafkaIdempotencyOptions
{
    /// <summary>Gets or sets how the idempotency key is read from a message (a payload field, the message key...).</summary>
    /// <value>
    /// Defaults to <see langword="null"/>: the UTF-8 value of header <see cref="KafkaIdempotencyOptions.KeyHeader"/>.
    /// Return <see langword="null"/> for a message without a key (it then follows <see cref="IdempotencyOptions.MissingKeyPolicy"/>).
    /// Never derive it from the offset: a producer retry writes the same message at a new offset.
    /// </value>
    public Func<ConsumeResult<TKey, TValue>, string?>? KeySelector { get; set; }

    /// <summary>Gets or sets the bytes whose SHA-256 is the payload fingerprint, also written to the dead-letter topic.</summary>
    /// <value>
    /// Defaults to <see langword="null"/>: the value itself when <typeparamref name="TValue"/> is <c>byte[]</c>, its UTF-8
    /// bytes when it is <see cref="string"/>. Required for any other value type (return the serialized form).
    /// </value>
    public Func<ConsumeResult<TKey, TValue>, ReadOnlyMemory<byte>>? BodySelector { get; set; }

    /// <inheritdoc/>
    protected override void AddValidationErrors(IList<string> errors)
    {
        base.AddValidationErrors(errors);
        if (BodySelector is null && typeof(TValue) != typeof(byte[]) && typeof(TValue) != typeof(string) && typeof(TValue) != typeof(Ignore) && typeof(TValue) != typeof(Null))
        {
            errors.Add($"{nameof(BodySelector)} is required when the value type is {typeof(TValue).Name} (only byte[] and string values are fingerprinted without one).");
        }
    }
}
