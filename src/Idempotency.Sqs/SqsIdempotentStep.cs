using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Delivery;
using Idempotency.Health;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Sqs;

/// <summary>
/// The idempotent handler call for an SQS receive loop the user keeps: give it a received <see cref="Message"/> and it
/// takes the key from where <see cref="IdempotentSqsWorker"/> would, runs the handler in the store's transaction, and
/// says what to do with the message, with the worker's decisions (only the handler spends attempts, counted per message
/// id in this process; a store outage or misconfiguration pauses; a poison message is dead-lettered).
/// <see cref="RunAndCarryOutAsync"/> also does it with the SQS client: delete, change visibility, send the dead-letter copy.
/// </summary>
/// <remarks>
/// Receive with <c>MessageAttributeNames = ["All"]</c> and <c>MessageSystemAttributeNames = ["All"]</c> so the key
/// attribute and the FIFO deduplication id arrive. Thread-safe; one per handler and queue.
/// </remarks>
public sealed class SqsIdempotentStep
{
    private readonly SqsIdempotencyOptions _options;
    private readonly SqsMessageReader _reader;

    /// <summary>Creates the step of one handler on one queue.</summary>
    /// <param name="processor">The handler's pipeline.</param>
    /// <param name="options">
    /// The queue (<see cref="SqsIdempotencyOptions.QueueUrl"/>), where the key comes from, and the
    /// <see cref="SqsIdempotencyOptions.DeadLetterQueueUrl"/> the copies go to; validated here. Polling settings are not used.
    /// </param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <param name="heartbeat">Optional heartbeat whose state the store gate sets.</param>
    /// <exception cref="ArgumentException">The options are invalid; the message names the setting.</exception>
    public SqsIdempotentStep(IdempotentProcessor processor, SqsIdempotencyOptions options, ILogger? logger = null, TimeProvider? timeProvider = null, ConsumerHeartbeat? heartbeat = null)
    {
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        _reader = new SqsMessageReader(options, processor.HandlerName, logger ?? NullLogger.Instance);
        Step = new IdempotentStep(processor, IdempotentSqsWorker.BrokerName, _reader.QueueName, retriesInPlace: false, logger, timeProvider, heartbeat, options.Observers);
    }

    /// <summary>Gets the broker-neutral step underneath (its engine, attempts and store gate).</summary>
    public IdempotentStep Step { get; }

    /// <summary>Gets whether the store answers and is set up; when <see langword="false"/>, wait with <see cref="WaitForStoreAsync"/> before receiving more.</summary>
    public bool IsStoreReady => Step.IsStoreReady;

    /// <summary>Waits until the store answers (returns at once when it does).</summary>
    /// <param name="cancellationToken">Cancels the wait.</param>
    /// <returns>A task that completes when the store answers and is set up.</returns>
    public Task WaitForStoreAsync(CancellationToken cancellationToken = default) => Step.WaitForStoreAsync(cancellationToken);

    /// <summary>Processes one received message and returns what to do with it; carries nothing out on the queue.</summary>
    /// <param name="message">The received message.</param>
    /// <param name="cancellationToken">Cancels processing; nothing is committed then, and the message must not be deleted.</param>
    /// <returns>The decision, with the dead-letter attributes when it is a dead-letter.</returns>
    public ValueTask<StepResult> RunAsync(Message message, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(message);
        return Step.RunAsync(_reader.ToIncoming(message), message.MessageId, attempt: null, cancellationToken);
    }

    /// <summary>Processes one received message and carries the decision out on the queue (see <see cref="CarryOutAsync"/>).</summary>
    /// <param name="sqs">The client the message was received with.</param>
    /// <param name="message">The received message.</param>
    /// <param name="cancellationToken">Cancels processing and the queue calls.</param>
    /// <returns>The decision that was carried out.</returns>
    public async Task<StepResult> RunAndCarryOutAsync(IAmazonSQS sqs, Message message, CancellationToken cancellationToken = default)
    {
        var result = await RunAsync(message, cancellationToken).ConfigureAwait(false);
        await CarryOutAsync(sqs, message, result, cancellationToken).ConfigureAwait(false);
        return result;
    }

    /// <summary>
    /// Carries a decision out: acknowledge = delete; retry = change the visibility to the retry delay (SQS delivers it
    /// again then); dead-letter = send a copy with the reason attributes to <see cref="SqsIdempotencyOptions.DeadLetterQueueUrl"/>,
    /// then delete (without a dead-letter queue: visible again at once, left to the queue's redrive policy); pause =
    /// change the visibility to the store backoff, then wait until the store answers.
    /// </summary>
    /// <param name="sqs">The client the message was received with.</param>
    /// <param name="message">The received message.</param>
    /// <param name="result">The decision from <see cref="RunAsync"/>.</param>
    /// <param name="cancellationToken">Cancels the calls and the wait for the store.</param>
    /// <returns>A task that completes when carried out. A failed SQS call throws and leaves the message to come back.</returns>
    public async Task CarryOutAsync(IAmazonSQS sqs, Message message, StepResult result, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(sqs);
        ArgumentNullException.ThrowIfNull(message);
        switch (result.Action)
        {
            case DeliveryAction.Acknowledge:
                await sqs.DeleteMessageAsync(_options.QueueUrl, message.ReceiptHandle, cancellationToken).ConfigureAwait(false);
                break;
            case DeliveryAction.DeadLetter when _options.DeadLetterQueueUrl is { } deadLetterQueue:
                var copy = _reader.DeadLetterRequest(message, deadLetterQueue, result.DeadLetterHeaders ?? new Dictionary<string, string>());
                await sqs.SendMessageAsync(copy, cancellationToken).ConfigureAwait(false);
                await sqs.DeleteMessageAsync(_options.QueueUrl, message.ReceiptHandle, cancellationToken).ConfigureAwait(false);
                break;
            case DeliveryAction.DeadLetter:
                await sqs.ChangeMessageVisibilityAsync(_options.QueueUrl, message.ReceiptHandle, 0, cancellationToken).ConfigureAwait(false);
                break;
            default:
                await sqs.ChangeMessageVisibilityAsync(_options.QueueUrl, message.ReceiptHandle, SqsMessageReader.ToSeconds(result.Delay), cancellationToken).ConfigureAwait(false);
                await result.StoreReady.WaitAsync(cancellationToken).ConfigureAwait(false);
                break;
        }
    }
}
