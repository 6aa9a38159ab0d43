using RabbitMQ.Client;

namespace Idempotency.RabbitMQ;

/// <summary>The queue type to declare.</summary>
public enum RabbitMqQueueType
{
    /// <summary>A classic queue (<c>x-queue-type: classic</c>). Attempts are counted by the consumer in memory.</summary>
    Classic = 0,

    /// <summary>A quorum queue (<c>x-queue-type: quorum</c>): replicated, durable, and it counts deliveries in <c>x-delivery-count</c>.</summary>
    Quorum = 1,
}

/// <summary>The names <see cref="RabbitMqTopology.DeclareAsync"/> declared.</summary>
/// <param name="Queue">The work queue.</param>
/// <param name="DeadLetterExchange">The dead-letter exchange (direct).</param>
/// <param name="DeadLetterQueue">The dead-letter queue, bound to <paramref name="DeadLetterExchange"/> with <paramref name="DeadLetterRoutingKey"/>.</param>
/// <param name="DeadLetterRoutingKey">The routing key dead-letters carry (the work queue's name).</param>
public sealed record RabbitMqQueueTopology(string Queue, string DeadLetterExchange, string DeadLetterQueue, string DeadLetterRoutingKey)
{
    /// <summary>Points the consumer options at this topology: the queue, and dead-letters republished to the DLX with the reason headers.</summary>
    /// <param name="options">The options to change.</param>
    /// <returns>The same options.</returns>
    public RabbitMqIdempotencyOptions ApplyTo(RabbitMqIdempotencyOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Queue = Queue;
        options.DeadLetterExchange = DeadLetterExchange;
        options.DeadLetterRoutingKey = DeadLetterRoutingKey;
        return options;
    }
}

/// <summary>
/// Declares a work queue with its dead-letter exchange and dead-letter queue, for classic and quorum queues.
/// </summary>
/// <remarks>
/// <para>The work queue gets these arguments:</para>
/// <list type="bullet">
/// <item><description><c>x-queue-type</c>: <c>classic</c> or <c>quorum</c>.</description></item>
/// <item><description><c>x-dead-letter-exchange</c>: <c>{queue}.dlx</c>, where the broker sends what is rejected with <c>basic.nack(requeue: false)</c> (or expires).</description></item>
/// <item><description><c>x-dead-letter-routing-key</c>: <c>{queue}</c>, so broker-side dead-letters reach <c>{queue}.dlq</c>.</description></item>
/// <item><description><c>x-delivery-limit</c> (quorum only, when given): the broker dead-letters a message by itself after that many redeliveries, <b>without</b>
/// the library's reason headers. Leave it unset, or set it well above <c>Retry.MaxAttempts</c> as a safety net: store outages and
/// shutdowns also requeue, and they count towards it.</description></item>
/// </list>
/// <para>Declaring is idempotent when the arguments match; RabbitMQ refuses (PRECONDITION_FAILED) a redeclaration with different arguments.</para>
/// </remarks>
public static class RabbitMqTopology
{
    /// <summary>Declares <c>{queue}</c>, <c>{queue}.dlx</c> and <c>{queue}.dlq</c> (all durable) and binds the DLQ.</summary>
    /// <param name="channel">An open channel.</param>
    /// <param name="queue">The work queue's name.</param>
    /// <param name="queueType">Classic or quorum; the DLQ gets the same type.</param>
    /// <param name="deliveryLimit">Quorum queues only: <c>x-delivery-limit</c>, or <see langword="null"/> for none.</param>
    /// <param name="cancellationToken">Cancels the declarations.</param>
    /// <returns>The declared names.</returns>
    public static async Task<RabbitMqQueueTopology> DeclareAsync(
        IChannel channel,
        string queue,
        RabbitMqQueueType queueType = RabbitMqQueueType.Classic,
        int? deliveryLimit = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentException.ThrowIfNullOrWhiteSpace(queue);
        if (deliveryLimit is < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(deliveryLimit), deliveryLimit, "deliveryLimit must be at least 1.");
        }

        if (deliveryLimit is not null && queueType != RabbitMqQueueType.Quorum)
        {
            throw new ArgumentException("deliveryLimit (x-delivery-limit) applies to quorum queues only.", nameof(deliveryLimit));
        }

        var type = queueType == RabbitMqQueueType.Quorum ? "quorum" : "classic";
        var topology = new RabbitMqQueueTopology(queue, queue + ".dlx", queue + ".dlq", queue);

        await channel.ExchangeDeclareAsync(topology.DeadLetterExchange, ExchangeType.Direct, durable: true, autoDelete: false, arguments: null, cancellationToken: cancellationToken).ConfigureAwait(false);
        await channel.QueueDeclareAsync(
            topology.DeadLetterQueue,
            durable: true,
            exclusive: false,
            autoDelete: false,
            arguments: new Dictionary<string, object?> { ["x-queue-type"] = type },
            cancellationToken: cancellationToken).ConfigureAwait(false);
        await channel.QueueBindAsync(topology.DeadLetterQueue, topology.DeadLetterExchange, topology.DeadLetterRoutingKey, arguments: null, cancellationToken: cancellationToken).ConfigureAwait(false);

        var arguments = new Dictionary<string, object?>
        {
            ["x-queue-type"] = type,
            ["x-dead-letter-exchange"] = topology.DeadLetterExchange,
            ["x-dead-letter-routing-key"] = topology.DeadLetterRoutingKey,
        };
        if (deliveryLimit is { } limit)
        {
            arguments["x-delivery-limit"] = limit;
        }

        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, arguments: arguments, cancellationToken: cancellationToken).ConfigureAwait(false);
        return topology;
    }
}
