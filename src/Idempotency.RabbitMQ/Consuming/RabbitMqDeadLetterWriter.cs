using Idempotency.Delivery;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// Dead-letters a delivery the RabbitMQ way, for the consumer and the step alike: a copy with the reason headers is
/// republished (publisher confirms) to <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/> and the original acked
/// after the confirm; without that exchange (or when the publish fails) it is <c>basic.nack(requeue: false)</c> and the
/// broker dead-letters it through the queue's <c>x-dead-letter-exchange</c>.
/// </summary>
internal sealed class RabbitMqDeadLetterWriter(IChannel? deadLetterChannel, RabbitMqIdempotencyOptions options, ILogger logger)
{
    private int _warnedNack;

    /// <summary>Builds the dead-letter copy's properties: the original ones, persistent, with the reason headers added.</summary>
    /// <param name="native">The delivery.</param>
    /// <param name="reasonHeaders">The common dead-letter headers (<see cref="DeadLetterHeaders.Create"/>).</param>
    /// <param name="queue">The consumed queue.</param>
    /// <returns>The properties.</returns>
    public static BasicProperties CopyProperties(RabbitMqDelivery native, IReadOnlyDictionary<string, string> reasonHeaders, string queue)
    {
        var properties = new BasicProperties(native.Properties) { Persistent = true };
        var headers = properties.Headers is { } existing
            ? new Dictionary<string, object?>(existing, StringComparer.Ordinal)
            : new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (name, value) in reasonHeaders)
        {
            headers[name] = value;
        }

        headers[RabbitMqDeadLetterHeaders.SourceQueue] = queue;
        headers[RabbitMqDeadLetterHeaders.SourceExchange] = native.Exchange;
        headers[RabbitMqDeadLetterHeaders.SourceRoutingKey] = native.RoutingKey;
        headers[RabbitMqDeadLetterHeaders.Redelivered] = native.Redelivered ? "true" : "false";
        properties.Headers = headers;
        return properties;
    }

    /// <summary>Sends the dead-letter and settles the original on <paramref name="channel"/>.</summary>
    /// <param name="channel">The channel the delivery came on (acked or nacked there).</param>
    /// <param name="native">The delivery.</param>
    /// <param name="reasonHeaders">The common dead-letter headers.</param>
    /// <param name="cancellationToken">Cancels the publish.</param>
    /// <returns><see langword="true"/> when the copy was published and confirmed (the original is acked); <see langword="false"/> when it was nacked to the queue's own dead-letter exchange.</returns>
    public async ValueTask<bool> DeadLetterAsync(IChannel channel, RabbitMqDelivery native, IReadOnlyDictionary<string, string> reasonHeaders, CancellationToken cancellationToken)
    {
        var published = false;
        if (deadLetterChannel is not null && options.DeadLetterExchange is { } exchange)
        {
            try
            {
                // Confirms are on for this channel: the call returns once the broker has the copy, and throws when it was
                // nacked or (mandatory) unroutable. Only then is the original acknowledged.
                var properties = CopyProperties(native, reasonHeaders, options.Queue);
                await deadLetterChannel.BasicPublishAsync(exchange, options.DeadLetterRoutingKey ?? native.RoutingKey, mandatory: true, properties, native.Body, cancellationToken).ConfigureAwait(false);
                published = true;
            }
            catch (Exception exception) when (exception is not OutOfMemoryException)
            {
                Log.DeadLetterPublishFailed(logger, exception, options.Queue, exchange);
            }
        }
        else if (Interlocked.Exchange(ref _warnedNack, 1) == 0)
        {
            Log.NackDeadLetter(logger, options.Queue);
        }

        if (published)
        {
            await channel.BasicAckAsync(native.DeliveryTag, multiple: false, CancellationToken.None).ConfigureAwait(false);
        }
        else
        {
            await channel.BasicNackAsync(native.DeliveryTag, multiple: false, requeue: false, CancellationToken.None).ConfigureAwait(false);
        }

        return published;
    }
}
