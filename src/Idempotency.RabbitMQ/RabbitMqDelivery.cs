using RabbitMQ.Client;

namespace Idempotency.RabbitMQ;

/// <summary>
/// The RabbitMQ details of one delivery, as <see cref="IncomingMessage.Native"/>: handlers reach it through
/// <c>context.GetNative&lt;RabbitMqDelivery&gt;()</c>. Unlike the client's <c>BasicDeliverEventArgs</c> it stays valid
/// after the delivery callback, because the body is a copy.
/// </summary>
public sealed class RabbitMqDelivery
{
    internal RabbitMqDelivery(ulong deliveryTag, bool redelivered, string exchange, string routingKey, string consumerTag, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body)
    {
        DeliveryTag = deliveryTag;
        Redelivered = redelivered;
        Exchange = exchange;
        RoutingKey = routingKey;
        ConsumerTag = consumerTag;
        Properties = properties;
        Body = body;
    }

    /// <summary>Gets the channel-scoped delivery tag.</summary>
    public ulong DeliveryTag { get; }

    /// <summary>Gets a value indicating whether the broker marked the delivery as redelivered.</summary>
    public bool Redelivered { get; }

    /// <summary>Gets the exchange the message was published to.</summary>
    public string Exchange { get; }

    /// <summary>Gets the routing key the message was published with.</summary>
    public string RoutingKey { get; }

    /// <summary>Gets the consumer tag the delivery was made to.</summary>
    public string ConsumerTag { get; }

    /// <summary>Gets the message properties (message id, headers, timestamp...).</summary>
    public IReadOnlyBasicProperties Properties { get; }

    /// <summary>Gets a copy of the body.</summary>
    public ReadOnlyMemory<byte> Body { get; }
}
