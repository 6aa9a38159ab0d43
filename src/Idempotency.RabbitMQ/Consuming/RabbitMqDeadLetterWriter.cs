using Idempotency.Delivery;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// Dead-letters a delivery the RabbitMQ way, for the consumer and the step alike: a copy with the reason headers is
/// republished (publisher confirms) to <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/> and the original acked
/// after the confirm. Without that exchange (or without a dead-letter channel) it is <c>basic.nack(requeue: false)</c> and
/// the broker dead-letters it through the queue's <c>x-dead-letter-exchange</c>. When the configured exchange does not
/// take the copy the original is left unsettled (<see cref="DeadLetterAsync"/> returns <see langword="false"/>): a nack
/// then would discard it on a queue without its own dead-letter exchange, and the library cannot see the queue's arguments.
/// </summary>
internal sealed class RabbitMqDeadLetterWriter(
    IChannel? deadLetterChannel,
    Func<CancellationToken, Task<IChannel>>? reopenChannel,
    RabbitMqIdempotencyOptions options,
    ILogger logger)
{
    private const ushort NotFound = 404;
    private readonly SemaphoreSlim _reopenLock = new(1, 1);
    private IChannel? _channel = deadLetterChannel;
    private int _warnedNack;

    /// <summary>Gets the dead-letter channel in use (a reopened one after a channel error), to close when stopping.</summary>
    public IChannel? Channel => Volatile.Read(ref _channel);

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

    /// <summary>
    /// Checks at start-up that <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/> exists (a passive declare), when
    /// dead-letters will be republished to it: a missing exchange would make every dead-letter fail at run time.
    /// </summary>
    /// <param name="cancellationToken">Cancels the check.</param>
    /// <returns>A task that completes when the exchange exists (or no exchange is used).</returns>
    /// <exception cref="InvalidOperationException">The exchange does not exist.</exception>
    public async Task VerifyExchangeAsync(CancellationToken cancellationToken)
    {
        // The default exchange ("") always exists and cannot be declared, not even passively.
        if (Channel is not { } channel || options.DeadLetterExchange is not { Length: > 0 } exchange)
        {
            return;
        }

        try
        {
            await channel.ExchangeDeclarePassiveAsync(exchange, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationInterruptedException exception) when (exception.ShutdownReason?.ReplyCode == NotFound)
        {
            throw new InvalidOperationException(
                $"{nameof(RabbitMqIdempotencyOptions.DeadLetterExchange)} '{exchange}' does not exist on the broker (queue '{options.Queue}'): declare it (RabbitMqTopology.DeclareAsync does) or fix the setting.",
                exception);
        }
    }

    /// <summary>Sends the dead-letter and settles the original on <paramref name="channel"/>, unless the dead-letter exchange refused the copy.</summary>
    /// <param name="channel">The channel the delivery came on (acked or nacked there).</param>
    /// <param name="native">The delivery.</param>
    /// <param name="reasonHeaders">The common dead-letter headers.</param>
    /// <param name="cancellationToken">Cancels the publish.</param>
    /// <returns>
    /// <see langword="true"/> when the delivery was dead-lettered and settled: the copy was confirmed and the original acked,
    /// or (no dead-letter exchange or channel) it was nacked to the queue's own dead-letter exchange. <see langword="false"/>
    /// when <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/> did not take the copy: the original is not settled,
    /// the caller returns it to the queue to be dead-lettered later.
    /// </returns>
    /// <exception cref="Exception">Settling the original failed (the channel is gone; the broker requeues it).</exception>
    public async ValueTask<bool> DeadLetterAsync(IChannel channel, RabbitMqDelivery native, IReadOnlyDictionary<string, string> reasonHeaders, CancellationToken cancellationToken)
    {
        if (Channel is not null && options.DeadLetterExchange is { } exchange)
        {
            if (!await PublishCopyAsync(exchange, native, reasonHeaders, cancellationToken).ConfigureAwait(false))
            {
                return false;
            }

            await channel.BasicAckAsync(native.DeliveryTag, multiple: false, CancellationToken.None).ConfigureAwait(false);
            return true;
        }

        if (Interlocked.Exchange(ref _warnedNack, 1) == 0)
        {
            Log.NackDeadLetter(logger, options.Queue);
        }

        await channel.BasicNackAsync(native.DeliveryTag, multiple: false, requeue: false, CancellationToken.None).ConfigureAwait(false);
        return true;
    }

    private async ValueTask<bool> PublishCopyAsync(string exchange, RabbitMqDelivery native, IReadOnlyDictionary<string, string> reasonHeaders, CancellationToken cancellationToken)
    {
        try
        {
            var deadLetterChannel = await OpenChannelAsync(cancellationToken).ConfigureAwait(false);

            // Confirms are on for this channel: the call returns once the broker has the copy, and throws when it was
            // nacked or (mandatory) unroutable. Only then is the original acknowledged.
            var properties = CopyProperties(native, reasonHeaders, options.Queue);
            await deadLetterChannel.BasicPublishAsync(exchange, options.DeadLetterRoutingKey ?? native.RoutingKey, mandatory: true, properties, native.Body, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            Log.DeadLetterPublishFailed(logger, exception, options.Queue, exchange);
            return false;
        }
    }

    /// <summary>
    /// Returns an open dead-letter channel. A channel error (a publish to a missing exchange is a 404) closes the channel for
    /// good, and automatic recovery only reopens channels after a connection loss; so a channel closed while its connection
    /// is up is replaced. A channel the caller owns cannot be replaced: the publish fails and is tried again later.
    /// </summary>
    private async ValueTask<IChannel> OpenChannelAsync(CancellationToken cancellationToken)
    {
        var current = Channel!;
        if (current.IsOpen || reopenChannel is null)
        {
            return current;
        }

        await _reopenLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            current = Channel!;
            if (current.IsOpen)
            {
                return current;
            }

            var reopened = await reopenChannel(cancellationToken).ConfigureAwait(false);
            Volatile.Write(ref _channel, reopened);
            Log.DeadLetterChannelReopened(logger, options.Queue, current.CloseReason?.ReplyCode ?? 0, current.CloseReason?.ReplyText ?? "closed");
            await RabbitMqChannels.CloseQuietlyAsync(current).ConfigureAwait(false);
            return reopened;
        }
        finally
        {
            _reopenLock.Release();
        }
    }
}
