using Idempotency.Delivery;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// RabbitMQ's ack model for the <see cref="DeliveryEngine"/>: <c>basic.ack</c> after the commit, a confirmed dead-letter
/// copy then <c>basic.ack</c> (or <c>basic.nack(requeue: false)</c>), <c>basic.nack(requeue: true)</c> after the delay to
/// try again, and <c>basic.cancel</c> to pause intake (through the consumer). Acks go through
/// <see cref="RabbitMqAcknowledgements"/>, which sends a lane's committed batch as one <c>basic.ack(multiple: true)</c>
/// when it can; every other settlement is recorded there once its frame was written.
/// </summary>
internal sealed class RabbitMqPort(
    IChannel channel,
    RabbitMqDeadLetterWriter deadLetters,
    string queue,
    string handlerName,
    ILogger logger,
    TimeProvider time,
    Action pauseIntake,
    CancellationToken stopping,
    int prefetchCount) : IDeliveryPort<RabbitMqWork>
{
    private readonly RabbitMqAcknowledgements _acks = new(channel, prefetchCount);
    private long _acknowledged;
    private long _deadLettered;
    private long _requeued;

    public bool RetriesInPlace => false;

    public string Broker => "rabbitmq";

    public string Destination => queue;

    public long Acknowledged => Interlocked.Read(ref _acknowledged);

    public long DeadLettered => Interlocked.Read(ref _deadLettered);

    public long Requeued => Interlocked.Read(ref _requeued);

    /// <summary>Gets how many <c>basic.ack</c> frames were sent (a multiple ack counts once).</summary>
    public long AckFrames => _acks.Frames;

    public string AttemptId(RabbitMqWork delivery) => delivery.AttemptId;

    public ValueTask AcknowledgeAsync(RabbitMqWork delivery, ProcessingResult result, CancellationToken cancellationToken) =>
        AcknowledgeAsync([delivery]);

    /// <summary>Acknowledges committed deliveries together (one <c>basic.ack(multiple: true)</c> when their tags allow it).</summary>
    public async ValueTask AcknowledgeAsync(IReadOnlyList<RabbitMqWork> deliveries)
    {
        var tags = new ulong[deliveries.Count];
        for (var i = 0; i < tags.Length; i++)
        {
            tags[i] = deliveries[i].DeliveryTag;
        }

        try
        {
            await _acks.AckAsync(tags).ConfigureAwait(false);
            Interlocked.Add(ref _acknowledged, tags.Length);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Committed but not acked: the broker redelivers them (redelivered flag) and the pipeline reports duplicates.
            Log.AckFailed(logger, exception, tags[0], queue);
        }
    }

    public async ValueTask<bool> DeadLetterAsync(RabbitMqWork delivery, ProcessingResult result, DeliveryDecision decision, int attempts, CancellationToken cancellationToken)
    {
        try
        {
            var headers = DeadLetterHeaders.Create(result, decision, handlerName, attempts);
            if (!await deadLetters.DeadLetterAsync(channel, delivery.Native, headers, CancellationToken.None).ConfigureAwait(false))
            {
                // The dead-letter exchange did not take the copy: the engine returns the delivery and tries again later.
                return false;
            }

            _acks.Settled(delivery.DeliveryTag);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The channel is gone: the broker requeues the delivery, and it is decided again when it comes back.
            Log.SettleFailed(logger, exception, delivery.DeliveryTag, queue);
            return false;
        }

        // Republished with confirms then acked, or nacked to the queue's own dead-letter exchange.
        Interlocked.Increment(ref _deadLettered);
        Log.DeadLettered(logger, delivery.Message.Key ?? "(none)", queue, decision.ReasonCode ?? "unknown", attempts);
        return true;
    }

    public async ValueTask ReturnAsync(RabbitMqWork delivery, TimeSpan delay, bool attemptSpent, CancellationToken cancellationToken)
    {
        await DelayAsync(delay).ConfigureAwait(false);
        await NackAsync(delivery).ConfigureAwait(false);
    }

    public void PauseIntake() => pauseIntake();

    public void ResumeIntake()
    {
        // The consumer resubscribes by itself once the store gate opens.
    }

    /// <summary>Gives a delivery back to the queue (<c>basic.nack(requeue: true)</c>).</summary>
    public async ValueTask NackAsync(RabbitMqWork delivery)
    {
        try
        {
            await channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: true, CancellationToken.None).ConfigureAwait(false);
            _acks.Settled(delivery.DeliveryTag);
            Interlocked.Increment(ref _requeued);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // The channel is gone; the broker requeues every unacknowledged delivery of a closed channel by itself.
            Log.SettleFailed(logger, exception, delivery.DeliveryTag, queue);
        }
    }

    /// <summary>Waits before a requeue; a stop cuts the wait short (the delivery is then requeued at once).</summary>
    public async ValueTask DelayAsync(TimeSpan delay)
    {
        if (delay <= TimeSpan.Zero || stopping.IsCancellationRequested)
        {
            return;
        }

        try
        {
            await Task.Delay(delay, time, stopping).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
