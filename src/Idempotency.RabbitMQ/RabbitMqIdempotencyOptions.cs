using System.Text;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ;

/// <summary>
/// Options of one <see cref="IdempotentRabbitMqConsumer"/> (and of a <see cref="RabbitMqIdempotentStep"/>): the queue, flow
/// control, key source and dead-lettering, next to the settings every consumer shares (<see cref="IdempotentConsumerOptions.Concurrency"/>,
/// <see cref="IdempotentConsumerOptions.BatchSize"/>, <see cref="IdempotentConsumerOptions.BatchMaxWait"/>...).
/// </summary>
/// <remarks>Validated when the consumer starts; every error names the setting. Binds from configuration (see <c>AddRabbitMqConsumer</c>).</remarks>
public sealed class RabbitMqIdempotencyOptions : IdempotentConsumerOptions
{
    /// <summary>The largest supported <see cref="IdempotentConsumerOptions.Concurrency"/>.</summary>
    [Obsolete("Use IdempotentConsumerOptions.MaxConcurrency, the limit all three adapters share.")]
    public const int MaxHandlerConcurrency = MaxConcurrency;

    /// <summary>Gets or sets the queue to consume.</summary>
    /// <value>Required.</value>
    public string Queue { get; set; } = string.Empty;

    /// <summary>Gets or sets how many unacknowledged deliveries the broker may hand this consumer (<c>basic.qos</c> prefetch count).</summary>
    /// <value>Defaults to 100; at least <see cref="IdempotentConsumerOptions.Concurrency"/> (and at least <see cref="IdempotentConsumerOptions.BatchSize"/> when <see cref="IdempotentConsumerOptions.BatchMaxWait"/> lingers), at most 65535.</value>
    public int PrefetchCount { get; set; } = 100;

    /// <summary>Gets or sets the former name of <see cref="IdempotentConsumerOptions.Concurrency"/> (handler workers).</summary>
    [Obsolete("Use Concurrency, the name all three adapters share.")]
    public int HandlerConcurrency
    {
        get => Concurrency;
        set => Concurrency = value;
    }

    /// <summary>Gets or sets the header that carries the idempotency key; when <see langword="null"/> the key is <c>BasicProperties.MessageId</c>.</summary>
    /// <value>Defaults to <see langword="null"/> (use the message id). Ignored when <see cref="KeySelector"/> is set.</value>
    public string? KeyHeader { get; set; }

    /// <summary>Gets or sets a function that picks the idempotency key from a delivery; it runs inside the delivery callback, where the body is valid.</summary>
    /// <value>Defaults to <see langword="null"/> (use <see cref="KeyHeader"/> or the message id). Return <see langword="null"/> for "no key".</value>
    public Func<BasicDeliverEventArgs, string?>? KeySelector { get; set; }

    /// <summary>Gets or sets the former name of <see cref="IdempotentConsumerOptions.BatchMaxWait"/>.</summary>
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
    /// The exchange must exist (the consumer checks at start); when it does not take a copy at run time, the delivery goes back
    /// to the queue and is dead-lettered later, never discarded.
    /// </summary>
    /// <value>Defaults to <see langword="null"/>. <see cref="RabbitMqTopology"/> returns the value to use. The empty string (default exchange) is allowed.</value>
    public string? DeadLetterExchange { get; set; }

    /// <summary>Gets or sets the routing key for republished dead-letters.</summary>
    /// <value>Defaults to <see langword="null"/>: the delivery's own routing key.</value>
    public string? DeadLetterRoutingKey { get; set; }

    /// <summary>Gets or sets the consumer tag; <see langword="null"/> lets the broker choose.</summary>
    /// <value>Defaults to <see langword="null"/>.</value>
    public string? ConsumerTag { get; set; }

    /// <inheritdoc/>
    protected override void AddValidationErrors(IList<string> errors)
    {
        base.AddValidationErrors(errors);
        if (string.IsNullOrWhiteSpace(Queue))
        {
            errors.Add($"{nameof(Queue)} is required.");
        }

        if (PrefetchCount is < 1 or > ushort.MaxValue)
        {
            errors.Add($"{nameof(PrefetchCount)} must be between 1 and {ushort.MaxValue} (was {PrefetchCount}).");
        }
        else if (PrefetchCount < Concurrency)
        {
            errors.Add($"{nameof(PrefetchCount)} must be at least {nameof(Concurrency)} ({Concurrency}), or workers sit idle (was {PrefetchCount}).");
        }
        else if (BatchSize > 1 && BatchMaxWait > TimeSpan.Zero && PrefetchCount < BatchSize)
        {
            // Natural batching takes what is waiting and never waits; a linger for fuller batches waits in vain for more than the prefetch.
            errors.Add($"{nameof(PrefetchCount)} must be at least {nameof(BatchSize)} ({BatchSize}) when {nameof(BatchMaxWait)} lingers for fuller batches, or every batch waits the whole linger (was {PrefetchCount}).");
        }

        if (KeyHeader is { Length: 0 })
        {
            errors.Add($"{nameof(KeyHeader)} must not be empty; use null for the message id.");
        }

        // AMQP 0-9-1 carries these as short strings (a length byte, then UTF-8): a longer one fails at run time, and for the
        // dead-letter routing key only when a dead-letter is published, so the message loses its reason headers.
        AddShortStringError(errors, nameof(Queue), Queue);
        AddShortStringError(errors, nameof(KeyHeader), KeyHeader);
        AddShortStringError(errors, nameof(DeadLetterExchange), DeadLetterExchange);
        AddShortStringError(errors, nameof(DeadLetterRoutingKey), DeadLetterRoutingKey);
        AddShortStringError(errors, nameof(ConsumerTag), ConsumerTag);
    }

    private static void AddShortStringError(IList<string> errors, string setting, string? value)
    {
        const int maxShortStringBytes = 255;
        if (value is not null && Encoding.UTF8.GetByteCount(value) is var bytes and > maxShortStringBytes)
        {
            errors.Add($"{setting} must be at most {maxShortStringBytes} UTF-8 bytes, the AMQP short-string limit (was {bytes} bytes).");
        }
    }
}
