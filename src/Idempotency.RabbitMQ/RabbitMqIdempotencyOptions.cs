using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ;

/// <summary>Options of one <see cref="IdempotentRabbitMqConsumer"/>: the queue, flow control, concurrency, key source, batching and dead-lettering.</summary>
/// <remarks>Validated when the consumer starts; every error names the setting.</remarks>
public sealed class RabbitMqIdempotencyOptions
{
    /// <summary>The largest supported <see cref="HandlerConcurrency"/>.</summary>
    public const int MaxHandlerConcurrency = 1024;

    /// <summary>Gets or sets the queue to consume.</summary>
    /// <value>Required.</value>
    public string Queue { get; set; } = string.Empty;

    /// <summary>Gets or sets how many unacknowledged deliveries the broker may hand this consumer (<c>basic.qos</c> prefetch count).</summary>
    /// <value>Defaults to 100; at least <see cref="HandlerConcurrency"/> (and at least <see cref="BatchSize"/> in batch mode), at most 65535.</value>
    public int PrefetchCount { get; set; } = 100;

    /// <summary>Gets or sets how many deliveries (or batches) are processed at the same time by the consumer's internal worker pool.</summary>
    /// <value>Defaults to 1; between 1 and <see cref="MaxHandlerConcurrency"/>. Each worker uses one store connection at a time.</value>
    public int HandlerConcurrency { get; set; } = 1;

    /// <summary>Gets or sets the header that carries the idempotency key; when <see langword="null"/> the key is <c>BasicProperties.MessageId</c>.</summary>
    /// <value>Defaults to <see langword="null"/> (use the message id). Ignored when <see cref="KeySelector"/> is set.</value>
    public string? KeyHeader { get; set; }

    /// <summary>Gets or sets how a key header's bytes become the key: exact UTF-8 (other bytes make the key invalid), hex or Base64.</summary>
    /// <value>Defaults to <see cref="KeyBytesEncoding.Utf8"/>.</value>
    public KeyBytesEncoding KeyBytesEncoding { get; set; } = KeyBytesEncoding.Utf8;

    /// <summary>Gets or sets a function that picks the idempotency key from a delivery; it runs inside the delivery callback, where the body is valid.</summary>
    /// <value>Defaults to <see langword="null"/> (use <see cref="KeyHeader"/> or the message id). Return <see langword="null"/> for "no key".</value>
    public Func<BasicDeliverEventArgs, string?>? KeySelector { get; set; }

    /// <summary>
    /// Gets or sets the largest batch (natural batching): when several deliveries are waiting in the prefetch buffer, a
    /// worker takes up to this many into one store transaction, each through the ordinary handler, in delivery order; a
    /// single waiting delivery takes the one-message path. 1 turns batching off (one transaction per delivery).
    /// </summary>
    /// <value>Defaults to 100; between 1 and 10000, and at most <see cref="PrefetchCount"/>.</value>
    public int BatchSize { get; set; } = 100;

    /// <summary>Gets or sets how long a worker waits for more deliveries after the first one of a batch (linger), for fuller batches.</summary>
    /// <value>Defaults to zero: take what is waiting, never wait. Between 0 and 10 s. Only used when <see cref="BatchSize"/> is above 1.</value>
    public TimeSpan BatchMaxWait { get; set; } = TimeSpan.Zero;

    /// <summary>Gets or sets the former name of <see cref="BatchMaxWait"/>.</summary>
    [Obsolete("Use BatchMaxWait, the name all three adapters share.")]
    public TimeSpan BatchTimeout
    {
        get => BatchMaxWait;
        set => BatchMaxWait = value;
    }

    /// <summary>
    /// Gets or sets the exchange that dead-lettered deliveries are republished to with the reason headers (publisher confirms on,
    /// the original acked only after the confirm). When <see langword="null"/> a dead-letter is a <c>basic.nack(requeue: false)</c>
    /// and the broker dead-letters it through the queue's <c>x-dead-letter-exchange</c>, with <c>x-death</c> but without the reason headers.
    /// </summary>
    /// <value>Defaults to <see langword="null"/>. <see cref="RabbitMqTopology"/> returns the value to use. The empty string (default exchange) is allowed.</value>
    public string? DeadLetterExchange { get; set; }

    /// <summary>Gets or sets the routing key for republished dead-letters.</summary>
    /// <value>Defaults to <see langword="null"/>: the delivery's own routing key.</value>
    public string? DeadLetterRoutingKey { get; set; }

    /// <summary>Gets or sets how long <see cref="IdempotentRabbitMqConsumer.StopAsync"/> lets in-flight deliveries finish before cancelling them (they are then left unacknowledged and requeued).</summary>
    /// <value>Defaults to 30 s; between 0 and 1 hour.</value>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Gets or sets how many failing messages the consumer remembers attempt counts for on queues that do not count deliveries
    /// (classic queues). Quorum queues report <c>x-delivery-count</c> and need no memory.
    /// </summary>
    /// <value>Defaults to 10000; between 1 and 10,000,000. The least recently seen entry is forgotten first.</value>
    public int MaxTrackedMessages { get; set; } = 10_000;

    /// <summary>Gets or sets the consumer tag; <see langword="null"/> lets the broker choose.</summary>
    /// <value>Defaults to <see langword="null"/>.</value>
    public string? ConsumerTag { get; set; }

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
        if (string.IsNullOrWhiteSpace(Queue))
        {
            errors.Add($"{nameof(Queue)} is required.");
        }
        else if (Queue.Length > 255)
        {
            errors.Add($"{nameof(Queue)} must be at most 255 characters (was {Queue.Length}).");
        }

        if (HandlerConcurrency is < 1 or > MaxHandlerConcurrency)
        {
            errors.Add($"{nameof(HandlerConcurrency)} must be between 1 and {MaxHandlerConcurrency} (was {HandlerConcurrency}).");
        }

        if (PrefetchCount is < 1 or > ushort.MaxValue)
        {
            errors.Add($"{nameof(PrefetchCount)} must be between 1 and {ushort.MaxValue} (was {PrefetchCount}).");
        }
        else if (PrefetchCount < HandlerConcurrency)
        {
            errors.Add($"{nameof(PrefetchCount)} must be at least {nameof(HandlerConcurrency)} ({HandlerConcurrency}), or workers sit idle (was {PrefetchCount}).");
        }

        if (BatchSize is < 1 or > 10_000)
        {
            errors.Add($"{nameof(BatchSize)} must be between 1 and 10000 (was {BatchSize}).");
        }
        else if (BatchSize > 1 && BatchMaxWait > TimeSpan.Zero && PrefetchCount < BatchSize)
        {
            // Natural batching takes what is waiting and never waits; a linger for fuller batches waits in vain for more than the prefetch.
            errors.Add($"{nameof(PrefetchCount)} must be at least {nameof(BatchSize)} ({BatchSize}) when {nameof(BatchMaxWait)} lingers for fuller batches, or every batch waits the whole linger (was {PrefetchCount}).");
        }

        if (BatchMaxWait < TimeSpan.Zero || BatchMaxWait > TimeSpan.FromSeconds(10))
        {
            errors.Add($"{nameof(BatchMaxWait)} must be between 0 and 10 seconds (was {BatchMaxWait}).");
        }

        if (KeyHeader is { Length: 0 })
        {
            errors.Add($"{nameof(KeyHeader)} must not be empty; use null for the message id.");
        }

        if (DeadLetterExchange is { Length: > 255 })
        {
            errors.Add($"{nameof(DeadLetterExchange)} must be at most 255 characters.");
        }

        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"{nameof(ShutdownTimeout)} must be between 0 and 1 hour (was {ShutdownTimeout}).");
        }

        if (MaxTrackedMessages is < 1 or > 10_000_000)
        {
            errors.Add($"{nameof(MaxTrackedMessages)} must be between 1 and 10000000 (was {MaxTrackedMessages}).");
        }

        return errors;
    }
}
