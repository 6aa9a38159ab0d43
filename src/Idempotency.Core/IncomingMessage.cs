namespace Idempotency;

/// <summary>
/// A message as a broker adapter hands it to the pipeline: the broker-neutral view of one delivery.
/// </summary>
/// <remarks>
/// Adapters build one per delivery. The body must stay valid until processing ends, so adapters whose
/// client reuses buffers (RabbitMQ.Client) copy it first.
/// </remarks>
public sealed class IncomingMessage
{
    /// <summary>Creates a message with the idempotency key the adapter's key selector produced.</summary>
    /// <param name="key">The idempotency key, or <see langword="null"/> when the message carries none.</param>
    /// <param name="body">The payload; its SHA-256 is the fingerprint stored with the key.</param>
    public IncomingMessage(string? key, ReadOnlyMemory<byte> body)
    {
        Key = key;
        Body = body;
    }

    /// <summary>Gets the idempotency key, or <see langword="null"/> when the message has none.</summary>
    public string? Key { get; }

    /// <summary>Gets the payload.</summary>
    public ReadOnlyMemory<byte> Body { get; }

    /// <summary>Gets the broker's name as used in telemetry (<c>kafka</c>, <c>rabbitmq</c>, <c>aws_sqs</c>).</summary>
    /// <value>Defaults to <c>none</c>.</value>
    public string Broker { get; init; } = "none";

    /// <summary>Gets the topic or queue the message came from.</summary>
    /// <value>Defaults to an empty string.</value>
    public string Destination { get; init; } = string.Empty;

    /// <summary>Gets the message's text headers or attributes (used for W3C trace context).</summary>
    public IReadOnlyDictionary<string, string>? Headers { get; init; }

    /// <summary>Gets the time the message was produced, when the broker tells it (for end-to-end lag).</summary>
    public DateTimeOffset? Timestamp { get; init; }

    /// <summary>Gets a value indicating whether the broker says this is a redelivery.</summary>
    public bool Redelivered { get; init; }

    /// <summary>Gets why the message was redelivered when the adapter knows it (<c>redelivery</c>, <c>rebalance</c>).</summary>
    public string? RedeliveryCause { get; init; }

    /// <summary>Gets the 1-based delivery attempt as far as the broker or adapter knows it.</summary>
    /// <value>Defaults to 1.</value>
    public int DeliveryAttempt { get; init; } = 1;

    /// <summary>
    /// Gets the consumer's position after this message, set by adapters that keep offsets in the store
    /// (<see cref="Storage.IConsumerPositionStore"/>); the store records it with the completion.
    /// </summary>
    /// <value>Defaults to <see langword="null"/>: nothing is recorded.</value>
    public Storage.ConsumerPosition? Position { get; init; }

    /// <summary>
    /// Gets a value indicating whether the adapter looked the key up moments ago
    /// (<see cref="IdempotentProcessor.LookUpProcessedAsync"/>) and did not find it committed, so the pipeline skips its
    /// own look-up. Only a hint: the claim stays the guarantee.
    /// </summary>
    public bool KeyLookedUp { get; init; }

    /// <summary>
    /// Gets why the adapter could not read the key exactly (such as key bytes that are not valid UTF-8); the message is
    /// then rejected as <see cref="ProcessingOutcome.InvalidKey"/> with this reason, before anything runs.
    /// </summary>
    public string? KeyError { get; init; }

    /// <summary>Gets the broker client's own message object, for handlers that need broker details.</summary>
    public object? Native { get; init; }
}
