namespace Idempotency.Chaos;

/// <summary>A message the orchestrator produces.</summary>
internal sealed record ChaosMessage(string Key, string Body)
{
    public bool IsPoison => Body.StartsWith("poison", StringComparison.Ordinal);
}

/// <summary>A fault a broker or store can inject while the consumer runs.</summary>
internal sealed record FaultKind(string Name, Func<Random, CancellationToken, Task> InjectAsync);

/// <summary>One broker of a scenario, orchestrator side; <see cref="RunChildAsync"/> is the child side.</summary>
internal abstract class BrokerRig : IAsyncDisposable
{
    public abstract string Name { get; }

    /// <summary>Gets the kill points this broker supports beyond the common ones.</summary>
    public virtual string Notes => "";

    /// <summary>
    /// Gets how long a kill waits for the consumer to reach its aimed point (a first result, a hold) before it counts as
    /// idle: long enough for a restarted consumer to get its work back after the previous one was killed.
    /// </summary>
    public virtual TimeSpan KillPointWait => TimeSpan.FromSeconds(5);

    /// <summary>Gets a line for the log after the run (e.g. how many connections went through the proxy).</summary>
    public virtual string Diagnostics => "";

    public static BrokerRig Create(string name) => name switch
    {
        "kafka" => new KafkaRig(),
        "rabbitmq" => new RabbitMqRig(),
        "rabbitmq-crash" => new RabbitMqRig(crash: true),
        "rabbitmq-crash-classic" => new RabbitMqRig(crash: true, Idempotency.RabbitMQ.RabbitMqQueueType.Classic),
        "sqs" => new SqsRig(),
        "sqs-fifo" => new SqsRig(fifo: true),
        _ => throw new NotSupportedException($"broker '{name}' is not wired into the chaos suite yet"),
    };

    public static Task RunChildAsync(ChildArgs args, IdempotentProcessor processor, Action ready, CancellationToken stop) => args.Broker switch
    {
        "kafka" => KafkaRig.RunKafkaChildAsync(args, processor, ready, stop),
        "rabbitmq" or "rabbitmq-crash" or "rabbitmq-crash-classic" => RabbitMqRig.RunRabbitChildAsync(args, processor, ready, stop),
        "sqs" or "sqs-fifo" => SqsRig.RunSqsChildAsync(args, processor, ready, stop),
        _ => throw new NotSupportedException(args.Broker),
    };

    /// <summary>Gets the ordering group of a key (its FIFO message group), or null when the broker keeps no order to check.</summary>
    public virtual string? OrderGroup(string key) => null;

    public abstract Task SetupAsync(string runId);

    /// <summary>Called when the kill phase ends: undoes what a fault left behind (Kafka: queued request errors).</summary>
    public virtual Task EndFaultsAsync() => Task.CompletedTask;

    public abstract Task ProduceAsync(IReadOnlyList<ChaosMessage> messages);

    public abstract void AddChildArgs(IDictionary<string, string> args);

    /// <summary>
    /// The soak's child arguments: only what a user must set (where the broker is, the queue or topic), straight to the
    /// broker with no proxy, plus <c>defaults</c>, which makes the child take the adapter's default options.
    /// </summary>
    public abstract void AddDefaultPathChildArgs(IDictionary<string, string> args);

    /// <summary>Gets the broker's own faults.</summary>
    public abstract IReadOnlyList<FaultKind> Faults { get; }

    /// <summary>Reads the dead-letter destination: the key of every message in it (one entry per message).</summary>
    public abstract Task<IReadOnlyList<string>> ReadDeadLettersAsync();

    /// <summary>
    /// Gets the broker's counters for the report (Kafka: committed offset and end offset per partition; RabbitMQ: ready,
    /// unacked, consumers; SQS: visible, in flight, delayed). Taken at the settle deadline, while the consumer still runs.
    /// </summary>
    public abstract Task<string> SnapshotAsync();

    /// <summary>
    /// Finds where each key's messages stand, once the consumer stopped: still deliverable, or passed by the broker's
    /// position (committed offset, ack, delete). Non-destructive: what it reads stays on the broker.
    /// </summary>
    public abstract Task<BrokerInspection> InspectAsync(IReadOnlyCollection<string> keys);

    /// <summary>
    /// For the verdict check: produces <paramref name="lost"/> then <paramref name="kept"/>, and moves the broker's
    /// position past <paramref name="lost"/> without any effect (Kafka: commits the offset after it; RabbitMQ: acks it;
    /// SQS: deletes it), so the broker holds only <paramref name="kept"/>.
    /// </summary>
    public abstract Task SimulateLossAsync(ChaosMessage lost, ChaosMessage kept);

    public abstract ValueTask DisposeAsync();
}
