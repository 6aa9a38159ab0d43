using Idempotency.Health;

namespace Idempotency;

/// <summary>
/// The lifecycle every idempotent consumer shares (Kafka, RabbitMQ, SQS): start taking messages, stop (draining what is in
/// flight within the options' <see cref="IdempotentConsumerOptions.ShutdownTimeout"/>), dispose. <see cref="IdempotentConsumerExtensions.RunAsync"/>
/// runs one until a token is cancelled.
/// </summary>
public interface IIdempotentConsumer : IAsyncDisposable
{
    /// <summary>Gets the consumer's name for logs and health, such as <c>rabbitmq:orders</c>.</summary>
    string Name { get; }

    /// <summary>Gets the pipeline the consumer runs (handler, options, store).</summary>
    IdempotentProcessor Processor { get; }

    /// <summary>Gets the consumer's heartbeat (alive, paused for the store, misconfigured), when health is tracked.</summary>
    ConsumerHeartbeat? Health { get; }

    /// <summary>Gets a task that completes when the consumer has stopped, and faults when it stopped on an error it cannot recover from.</summary>
    Task Completion { get; }

    /// <summary>Starts taking messages; returns once the consumer is subscribed (processing runs in the background).</summary>
    /// <param name="cancellationToken">Cancels starting.</param>
    /// <returns>A task that completes when started.</returns>
    Task StartAsync(CancellationToken cancellationToken = default);

    /// <summary>Stops taking messages and lets in-flight ones settle, within the shutdown timeout; what has not settled then goes back to the broker unacknowledged.</summary>
    /// <param name="cancellationToken">Cuts the drain short.</param>
    /// <returns>A task that completes when stopped.</returns>
    Task StopAsync(CancellationToken cancellationToken = default);
}
