/// <summary>
/// One broker of the many-consumer-processes benchmark: it creates the queue or topic of a run, loads or produces the
/// messages, tells when the consumer processes are ready and when every message is settled, and measures its own CPU.
/// </summary>
internal interface IBrokerUnderTest : IAsyncDisposable
{
    /// <summary>Gets the broker's name in the table (RabbitMQ, Kafka, SQS).</summary>
    string Name { get; }

    /// <summary>Gets how many distinct keys a run sends (each 5th sent twice).</summary>
    int Unique { get; }

    /// <summary>Gets one sentence for the report: queue or topic, consumer type and its options.</summary>
    string Setup { get; }

    /// <summary>Gets what the broker CPU column measures.</summary>
    string CpuSource { get; }

    /// <summary>Creates the run's queue or topic and, for queues, loads the messages (before the clock).</summary>
    Task PrepareAsync(string runId, IReadOnlyList<string> sends);

    /// <summary>The broker part of a consumer process's command line.</summary>
    IEnumerable<string> ConsumerArguments(string runId);

    /// <summary>Waits until every consumer process can take messages at once (connected; for Kafka, assigned its partitions).</summary>
    Task WaitForConsumersAsync(IReadOnlyList<ChildProcess> consumers);

    /// <summary>Starts the clock's part of the run: the consumers' go signal, or (Kafka) producing the messages.</summary>
    Task StartAsync(string runId, IReadOnlyList<ChildProcess> consumers);

    /// <summary>Messages of the run not settled yet (ready in the queue, or not covered by a committed offset).</summary>
    Task<long> PendingAsync(string runId);

    /// <summary>CPU seconds the broker has used so far.</summary>
    double CpuSeconds();

    /// <summary>Removes the run's queue (topics stay in the mock cluster until it ends).</summary>
    Task CleanupAsync(string runId);
}
