using Idempotency.Delivery;
using Idempotency.Health;
using Idempotency.RabbitMQ.Consuming;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ;

/// <summary>
/// The idempotent handler call for a RabbitMQ consume callback the team keeps (an <see cref="AsyncEventingBasicConsumer"/>
/// with <c>autoAck: false</c>): <see cref="RunAsync"/> takes the delivery, derives its key from the default place (the
/// message id, or <see cref="RabbitMqIdempotencyOptions.KeyHeader"/> / <see cref="RabbitMqIdempotencyOptions.KeySelector"/>),
/// runs the handler in the store's transaction and returns what to do with the delivery, with the same decisions as
/// <see cref="IdempotentRabbitMqConsumer"/>; <see cref="CompleteAsync"/> carries the decision out on the channel.
/// </summary>
/// <remarks>
/// Thread-safe; one per handler and queue. Of the options it uses the queue, the key source, <see cref="IdempotentConsumerOptions.KeyBytesEncoding"/>,
/// <see cref="IdempotentConsumerOptions.MaxTrackedMessages"/>, <see cref="IdempotentConsumerOptions.Observers"/> and the dead-letter exchange;
/// concurrency, prefetch and batching stay the loop's own.
/// </remarks>
public sealed class RabbitMqIdempotentStep
{
    private readonly IdempotentStep _step;
    private readonly RabbitMqMessageReader _reader;
    private readonly RabbitMqDeadLetterWriter _deadLetters;
    private readonly TimeProvider _time;
    private readonly TimeSpan _deadLetterRetryDelay;

    /// <summary>Creates the step of one handler on one queue.</summary>
    /// <param name="processor">The handler's pipeline (handler, options, store).</param>
    /// <param name="options">The queue, key source and dead-letter exchange; validated here.</param>
    /// <param name="deadLetterChannel">
    /// A channel created with publisher confirmations, to republish dead-letters with the reason headers to
    /// <see cref="RabbitMqIdempotencyOptions.DeadLetterExchange"/>; when <see langword="null"/> a dead-letter is
    /// <c>basic.nack(requeue: false)</c> (the queue's <c>x-dead-letter-exchange</c>, with <c>x-death</c> only).
    /// </param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">The clock of retry delays; defaults to <see cref="TimeProvider.System"/>.</param>
    /// <param name="heartbeat">Optional heartbeat whose state follows the store (paused, misconfigured).</param>
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public RabbitMqIdempotentStep(
        IdempotentProcessor processor,
        RabbitMqIdempotencyOptions options,
        IChannel? deadLetterChannel = null,
        ILogger? logger = null,
        TimeProvider? timeProvider = null,
        ConsumerHeartbeat? heartbeat = null)
    {
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _time = timeProvider ?? TimeProvider.System;
        _step = new IdempotentStep(processor, "rabbitmq", options.Queue, retriesInPlace: false, logger, _time, heartbeat, options.Observers);
        _reader = new RabbitMqMessageReader(options, processor.HandlerName, logger ?? NullLogger.Instance);
        _deadLetters = new RabbitMqDeadLetterWriter(deadLetterChannel, reopenChannel: null, options, logger ?? NullLogger.Instance);
        _deadLetterRetryDelay = processor.StoreUnavailableBackoff.InitialDelay;
        Queue = options.Queue;
    }

    /// <summary>Gets the consumed queue.</summary>
    public string Queue { get; }

    /// <summary>Gets whether the store answers and is set up; when <see langword="false"/>, take no more deliveries until <see cref="WaitForStoreAsync"/> completes.</summary>
    public bool IsStoreReady => _step.IsStoreReady;

    /// <summary>Waits until the store answers (returns at once when it does).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>A task that completes when the store answers and is set up.</returns>
    public Task WaitForStoreAsync(CancellationToken cancellationToken = default) => _step.WaitForStoreAsync(cancellationToken);

    /// <summary>
    /// Processes one delivery and returns what to do with it; call it inside the delivery callback (the body is copied).
    /// Nothing is acknowledged here: carry the result out with <see cref="CompleteAsync"/> or by hand.
    /// </summary>
    /// <param name="delivery">The delivery.</param>
    /// <param name="cancellationToken">Cancels processing; nothing is committed then, and the delivery must not be acknowledged.</param>
    /// <returns>The decision: acknowledge, retry after the delay, dead-letter with the headers, or pause until the store answers.</returns>
    public ValueTask<StepResult> RunAsync(BasicDeliverEventArgs delivery, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(delivery);
        var work = _reader.Read(delivery, _step.Engine.Attempts);
        return _step.RunAsync(work.Message, work.AttemptId, work.Message.DeliveryAttempt, cancellationToken);
    }

    /// <summary>
    /// Carries a decision out on <paramref name="channel"/>: <c>basic.ack</c>; for a retry, waits the delay then
    /// <c>basic.nack(requeue: true)</c>; for a dead-letter, publishes the copy with the reason headers then acks (or
    /// <c>basic.nack(requeue: false)</c> without a dead-letter channel; when the dead-letter exchange does not take the copy,
    /// waits and <c>basic.nack(requeue: true)</c>, so it is dead-lettered when it comes back, never discarded); for a pause, requeues the delivery and waits until
    /// the store answers, so the callback takes no more deliveries meanwhile.
    /// </summary>
    /// <param name="channel">The channel the delivery came on.</param>
    /// <param name="delivery">The delivery.</param>
    /// <param name="result">The decision from <see cref="RunAsync"/>.</param>
    /// <param name="cancellationToken">Cuts a retry delay or a pause short (stopping): the delivery is requeued at once.</param>
    /// <returns>A task that completes when the decision was carried out.</returns>
    public async ValueTask CompleteAsync(IChannel channel, BasicDeliverEventArgs delivery, StepResult result, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(channel);
        ArgumentNullException.ThrowIfNull(delivery);
        switch (result.Action)
        {
            case DeliveryAction.Acknowledge:
                await channel.BasicAckAsync(delivery.DeliveryTag, multiple: false, CancellationToken.None).ConfigureAwait(false);
                return;

            case DeliveryAction.DeadLetter:
                var native = (RabbitMqDelivery)result.Result.Message.Native!;
                if (!await _deadLetters.DeadLetterAsync(channel, native, result.DeadLetterHeaders ?? new Dictionary<string, string>(), CancellationToken.None).ConfigureAwait(false))
                {
                    // The dead-letter exchange did not take the copy: back to the queue (not discarded), dead-lettered
                    // when it comes back; that requeue is not a handler attempt.
                    _step.Engine.Attempts.RecordRequeue(RabbitMqMessageReader.AttemptIdOf(result.Result.Message.Key, result.Result.Message.Body.Span));
                    await WaitQuietlyAsync(Task.Delay(_deadLetterRetryDelay, _time, cancellationToken)).ConfigureAwait(false);
                    await channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: true, CancellationToken.None).ConfigureAwait(false);
                }

                return;

            case DeliveryAction.PauseAndRetry:
                // Requeued at once (nothing held unacked through a long outage); the callback then holds the channel's
                // dispatch until the store answers, so no more deliveries are taken meanwhile.
                await channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: true, CancellationToken.None).ConfigureAwait(false);
                await WaitQuietlyAsync(result.StoreReady.WaitAsync(cancellationToken)).ConfigureAwait(false);
                return;

            default:
                // Retry (an attempt spent) or RetryLater (another worker holds the key): back to the queue after the delay.
                await WaitQuietlyAsync(Task.Delay(result.Delay, _time, cancellationToken)).ConfigureAwait(false);
                await channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: true, CancellationToken.None).ConfigureAwait(false);
                return;
        }
    }

    /// <summary>Runs a delivery through <see cref="RunAsync"/> and carries the decision out with <see cref="CompleteAsync"/>: the one call a callback needs.</summary>
    /// <param name="channel">The channel the delivery came on.</param>
    /// <param name="delivery">The delivery.</param>
    /// <param name="cancellationToken">Cancels processing and cuts waits short; a cancelled delivery is requeued, never acknowledged.</param>
    /// <returns>The decision that was carried out.</returns>
    public async Task<StepResult> HandleAsync(IChannel channel, BasicDeliverEventArgs delivery, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(channel);
        StepResult result;
        try
        {
            result = await RunAsync(delivery, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            await channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: true, CancellationToken.None).ConfigureAwait(false);
            throw;
        }

        await CompleteAsync(channel, delivery, result, cancellationToken).ConfigureAwait(false);
        return result;
    }

    private static async Task WaitQuietlyAsync(Task wait)
    {
        try
        {
            await wait.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // Stopping: carry on at once.
        }
    }
}
