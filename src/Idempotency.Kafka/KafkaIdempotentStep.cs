using System.Globalization;
using Confluent.Kafka;
using Idempotency.Delivery;
using Idempotency.Health;
using Idempotency.Kafka.Consuming;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Kafka;

/// <summary>
/// The drop-in for a consume loop you keep: one call per <see cref="ConsumeResult{TKey, TValue}"/> takes the key from
/// the default place (header <see cref="KafkaIdempotencyOptions.KeyHeader"/>, or the options' key selector), runs the
/// handler in the store's transaction and says what to do with the message, with the same decisions as
/// <see cref="IdempotentKafkaConsumer{TKey, TValue}"/> (<see cref="IdempotentStep"/> in Core).
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <remarks>
/// <code>
/// var result = await step.RunAsync(record, ct);
/// await step.CompleteAsync(consumer, record, result, ct);   // store the offset, seek back, dead-letter or wait for the store
/// </code>
/// <see cref="CompleteAsync"/> stores the offset (<c>StoreOffset</c>) only once the message settled: build the consumer
/// with <c>EnableAutoOffsetStore = false</c> (auto-commit then commits stored offsets) and do not store or commit past a
/// message yourself. One step per consumer; thread-safe. Attempts are counted in this process, per partition and offset.
/// </remarks>
public sealed class KafkaIdempotentStep<TKey, TValue>
{
    private readonly IdempotentStep _step;
    private readonly KafkaIdempotencyOptions _options;
    private readonly KafkaMessageReader<TKey, TValue> _reader;
    private readonly KafkaDeadLetterWriter? _deadLetters;
    private readonly TimeProvider _time;

    /// <summary>Creates the step of one handler for one consumer.</summary>
    /// <param name="processor">The handler's pipeline.</param>
    /// <param name="options">Where the key comes from, the dead-letter topic, observers; defaults when null. Validated here.</param>
    /// <param name="deadLetterProducer">Produces dead-letters for <see cref="CompleteAsync"/>; without one, produce <see cref="CreateDeadLetter"/> yourself.</param>
    /// <param name="logger">Optional logger.</param>
    /// <param name="timeProvider">Optional clock.</param>
    /// <param name="heartbeat">Optional heartbeat whose state the store gate sets (for the health check).</param>
    /// <exception cref="ArgumentException">The options are invalid, or the value type needs a body selector.</exception>
    public KafkaIdempotentStep(
        IdempotentProcessor processor,
        KafkaIdempotencyOptions? options = null,
        IProducer<byte[]?, byte[]?>? deadLetterProducer = null,
        ILogger? logger = null,
        TimeProvider? timeProvider = null,
        ConsumerHeartbeat? heartbeat = null)
    {
        ArgumentNullException.ThrowIfNull(processor);
        _options = options ?? new KafkaIdempotencyOptions<TKey, TValue>();
        var errors = KafkaMessageReader<TKey, TValue>.ValidationErrors(_options);
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        var log = logger ?? NullLogger.Instance;
        _time = timeProvider ?? TimeProvider.System;
        _reader = new KafkaMessageReader<TKey, TValue>(_options, positionGroup: null, log);
        _deadLetters = deadLetterProducer is null ? null : new KafkaDeadLetterWriter(deadLetterProducer, _options, log, _time);
        var destination = _options.Topics.Count > 0 ? string.Join(",", _options.Topics) : "kafka";
        _step = new IdempotentStep(processor, "kafka", destination, retriesInPlace: false, log, _time, heartbeat, _options.Observers);
    }

    /// <summary>Gets a value indicating whether the store answers and is set up.</summary>
    public bool IsStoreReady => _step.IsStoreReady;

    /// <summary>Processes one consumed message in the store's transaction and decides what becomes of it.</summary>
    /// <param name="record">The message, as <c>Consume</c> returned it.</param>
    /// <param name="cancellationToken">Cancels processing; nothing is committed then: do not store its offset.</param>
    /// <returns>
    /// <see cref="DeliveryAction.Acknowledge"/>: store the offset; <see cref="DeliveryAction.DeadLetter"/>: produce
    /// <see cref="CreateDeadLetter"/> to <see cref="GetDeadLetterTopic"/>, then store the offset;
    /// <see cref="DeliveryAction.Retry"/> or <see cref="DeliveryAction.RetryLater"/>: seek back to the message and wait
    /// <see cref="StepResult.Delay"/>; <see cref="DeliveryAction.PauseAndRetry"/>: seek back and take nothing until
    /// <see cref="StepResult.StoreReady"/> completes. <see cref="CompleteAsync"/> does all of this.
    /// </returns>
    public ValueTask<StepResult> RunAsync(ConsumeResult<TKey, TValue> record, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(record);
        var attemptId = AttemptId(record);
        var read = _reader.Read(record);
        if (read.IsUnreadable)
        {
            // The body selector threw: the handler never runs, and the message is dead-lettered as unreadable.
            return _step.SettleUnprocessedAsync(_reader.Unreadable(read), attemptId, cancellationToken);
        }

        var message = _reader.ToIncoming(record, read.Body, _step.Engine.Attempts.NextAttempt(attemptId));
        return _step.RunAsync(message, attemptId, attempt: null, cancellationToken);
    }

    /// <summary>Returns the dead-letter topic of a source topic (<see cref="KafkaIdempotencyOptions.GetDeadLetterTopic"/>).</summary>
    /// <param name="topic">The source topic.</param>
    /// <returns>The dead-letter topic.</returns>
    public string GetDeadLetterTopic(string topic) => _options.GetDeadLetterTopic(topic);

    /// <summary>Builds the dead-letter copy of a message: its key, value and headers plus the reason and origin headers.</summary>
    /// <param name="record">The message.</param>
    /// <param name="result">Its <see cref="DeliveryAction.DeadLetter"/> result.</param>
    /// <returns>The message to produce to <see cref="GetDeadLetterTopic"/>.</returns>
    public Message<byte[]?, byte[]?> CreateDeadLetter(ConsumeResult<TKey, TValue> record, StepResult result)
    {
        ArgumentNullException.ThrowIfNull(record);
        var reason = result.DeadLetterHeaders ?? new Dictionary<string, string>(StringComparer.Ordinal);
        return new Message<byte[]?, byte[]?>
        {
            Key = KafkaMessageReader<TKey, TValue>.KeyBytes(record.Message.Key),
            Value = result.Result.Message.Body.ToArray(),
            Headers = KafkaDeadLetterWriter.CreateHeaders(record.TopicPartitionOffset, record.Message.Timestamp, record.Message.Headers, reason),
        };
    }

    /// <summary>
    /// Carries a result out on the consumer: stores the offset of a settled message (after producing its dead-letter,
    /// retried until the dead-letter topic takes it); seeks back to a message to be retried and waits its delay; while
    /// the store is down or misconfigured, seeks back, pauses the assignment and keeps polling (the group membership
    /// stays alive) until the store answers, then resumes.
    /// </summary>
    /// <param name="consumer">The consumer that returned <paramref name="record"/>; called on the caller's thread.</param>
    /// <param name="record">The message.</param>
    /// <param name="result">What <see cref="RunAsync"/> decided.</param>
    /// <param name="cancellationToken">Ends waits; the message is then left unsettled (nothing stored).</param>
    /// <returns>A task that completes when the message settled or may be consumed again.</returns>
    /// <exception cref="InvalidOperationException">A dead-letter without a dead-letter producer.</exception>
    public async ValueTask CompleteAsync(IConsumer<TKey, TValue> consumer, ConsumeResult<TKey, TValue> record, StepResult result, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(consumer);
        ArgumentNullException.ThrowIfNull(record);
        switch (result.Action)
        {
            case DeliveryAction.Acknowledge:
                consumer.StoreOffset(record);
                return;

            case DeliveryAction.DeadLetter:
                if (_deadLetters is null)
                {
                    throw new InvalidOperationException("A dead-letter needs a dead-letter producer: pass one to the step, or produce CreateDeadLetter(record, result) yourself and then store the offset.");
                }

                var copy = CreateDeadLetter(record, result);
                await _deadLetters.WriteAsync(record.TopicPartitionOffset, record.Message.Timestamp, copy.Key, copy.Value, record.Message.Headers, result.DeadLetterHeaders ?? new Dictionary<string, string>(), result.Attempt, cancellationToken).ConfigureAwait(false);
                consumer.StoreOffset(record);
                return;

            case DeliveryAction.PauseAndRetry:
                consumer.Seek(record.TopicPartitionOffset);
                await PollPausedUntilAsync(consumer, result.StoreReady, cancellationToken).ConfigureAwait(false);
                return;

            default:
                // Retry and RetryLater: the partition may not move past the message; consume it again after the delay.
                consumer.Seek(record.TopicPartitionOffset);
                await Task.Delay(result.Delay, _time, cancellationToken).ConfigureAwait(false);
                return;
        }
    }

    private static string AttemptId(ConsumeResult<TKey, TValue> record) =>
        string.Create(CultureInfo.InvariantCulture, $"{record.TopicPartition}@{record.Offset.Value}");

    /// <summary>Keeps the group membership alive while the store is down: every assigned partition paused, polled until <paramref name="ready"/>.</summary>
    private async Task PollPausedUntilAsync(IConsumer<TKey, TValue> consumer, Task ready, CancellationToken cancellationToken)
    {
        var paused = consumer.Assignment.ToHashSet();
        consumer.Pause(paused);
        try
        {
            while (!ready.IsCompleted)
            {
                cancellationToken.ThrowIfCancellationRequested();
                if (consumer.Consume(_options.PollTimeout) is { Message: not null } early)
                {
                    // A partition assigned meanwhile is not paused yet: put its message back and pause it too.
                    consumer.Seek(early.TopicPartitionOffset);
                    consumer.Pause([early.TopicPartition]);
                    paused.Add(early.TopicPartition);
                }

                await Task.Yield();
            }
        }
        finally
        {
            // Every partition paused here is resumed, assigned or not: librdkafka keeps an application's pause across a
            // revoke and a re-assign, so one a rebalance took away during the outage would come back paused for good.
            var assigned = consumer.Assignment.ToHashSet();
            consumer.Resume(paused.Where(assigned.Contains).ToList());
            foreach (var partition in paused.Where(p => !assigned.Contains(p)))
            {
                try
                {
                    consumer.Resume([partition]);
                }
                catch (KafkaException)
                {
                    // A partition librdkafka no longer knows holds no pause to keep.
                }
            }
        }
    }
}
