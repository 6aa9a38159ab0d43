using Idempotency.Delivery;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka.Consuming;

/// <summary>What every partition lane of one consumer shares while it runs.</summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
internal sealed class LaneContext<TKey, TValue> : IDisposable
{
    /// <summary>Creates the context of one run.</summary>
    /// <param name="engine">The consumer's delivery engine.</param>
    /// <param name="options">The Kafka options.</param>
    /// <param name="reader">Maps records to messages.</param>
    /// <param name="deadLetters">Produces dead-letters.</param>
    /// <param name="tracker">The offset tracker.</param>
    /// <param name="hooks">Test and benchmark observers.</param>
    /// <param name="logger">The logger.</param>
    /// <param name="time">The clock.</param>
    public LaneContext(DeliveryEngine engine, KafkaIdempotencyOptions options, KafkaMessageReader<TKey, TValue> reader, KafkaDeadLetterWriter deadLetters, OffsetTracker tracker, KafkaConsumerHooks hooks, ILogger logger, TimeProvider time)
    {
        Engine = engine;
        Options = options;
        Reader = reader;
        DeadLetters = deadLetters;
        Tracker = tracker;
        Hooks = hooks;
        Logger = logger;
        Time = time;
        Slots = new SemaphoreSlim(options.Concurrency, options.Concurrency);
        Drain = new ShutdownDrain($"Kafka consumer of handler {engine.Processor.HandlerName}", time, logger);
    }

    /// <summary>Gets the consumer's delivery engine (decisions, attempts, store gate).</summary>
    public DeliveryEngine Engine { get; }

    /// <summary>Gets the pipeline.</summary>
    public IdempotentProcessor Processor => Engine.Processor;

    /// <summary>Gets the Kafka options.</summary>
    public KafkaIdempotencyOptions Options { get; }

    /// <summary>Gets the record-to-message mapping.</summary>
    public KafkaMessageReader<TKey, TValue> Reader { get; }

    /// <summary>Gets the dead-letter producer.</summary>
    public KafkaDeadLetterWriter DeadLetters { get; }

    /// <summary>Gets the offset tracker.</summary>
    public OffsetTracker Tracker { get; }

    /// <summary>Gets the test and benchmark observers.</summary>
    public KafkaConsumerHooks Hooks { get; }

    /// <summary>Gets the logger.</summary>
    public ILogger Logger { get; }

    /// <summary>Gets the clock.</summary>
    public TimeProvider Time { get; }

    /// <summary>Gets the concurrency slots: how many partitions have a store transaction in flight at once.</summary>
    public SemaphoreSlim Slots { get; }

    /// <summary>Gets the shutdown drain of lanes that stop (a stop, a revoke or a loss).</summary>
    public ShutdownDrain Drain { get; }

    /// <summary>Gets the source that cuts a drain short (a stop whose token was cancelled).</summary>
    public CancellationTokenSource DrainAbort { get; } = new();

    /// <inheritdoc/>
    public void Dispose()
    {
        Slots.Dispose();
        DrainAbort.Dispose();
    }
}

/// <summary>Observers of a consumer's results, for tests, diagnostics and the benchmark.</summary>
internal sealed class KafkaConsumerHooks
{
    /// <summary>Gets or sets an observer of every final result (after retries).</summary>
    public Action<ProcessingResult>? ResultObserver { get; set; }

    /// <summary>Gets or sets an observer of each store call's duration (messages in it, elapsed).</summary>
    public Action<int, TimeSpan>? DurationObserver { get; set; }

    /// <summary>Gets or sets a value indicating whether shutdown commits the settled offsets (tests turn it off to act like a crash).</summary>
    public bool CommitOnShutdown { get; set; } = true;
}
