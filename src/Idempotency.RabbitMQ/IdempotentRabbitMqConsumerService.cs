using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ;

/// <summary>
/// A hosted form of <see cref="IdempotentRabbitMqConsumer"/>: starts consuming when the host starts and stops gracefully
/// (see <see cref="IdempotentRabbitMqConsumer.StopAsync"/>) when it stops. Usable without dependency injection:
/// <c>new IdempotentRabbitMqConsumerService(connection, processor, options)</c>.
/// </summary>
/// <remarks>The host's shutdown timeout should exceed <see cref="IdempotentConsumerOptions.ShutdownTimeout"/>.</remarks>
public sealed class IdempotentRabbitMqConsumerService : BackgroundService
{
    private readonly Func<CancellationToken, ValueTask<IConnection>> _connection;
    private readonly IdempotentProcessor _processor;
    private readonly RabbitMqIdempotencyOptions _options;
    private readonly ILogger? _logger;
    private readonly TaskCompletionSource<IdempotentRabbitMqConsumer> _consumer = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Creates the service over an open connection (which the caller owns).</summary>
    /// <param name="connection">The connection; automatic recovery should be on.</param>
    /// <param name="processor">The pipeline every delivery runs through.</param>
    /// <param name="options">The consumer options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    public IdempotentRabbitMqConsumerService(IConnection connection, IdempotentProcessor processor, RabbitMqIdempotencyOptions options, ILogger? logger = null)
        : this(_ => ValueTask.FromResult(connection ?? throw new ArgumentNullException(nameof(connection))), processor, options, logger)
    {
        ArgumentNullException.ThrowIfNull(connection);
    }

    /// <summary>Creates the service with a connection obtained when the host starts (for example a shared, DI-registered connection).</summary>
    /// <param name="connection">Returns the connection to consume on; the service does not dispose it.</param>
    /// <param name="processor">The pipeline every delivery runs through.</param>
    /// <param name="options">The consumer options; validated here.</param>
    /// <param name="logger">Optional logger.</param>
    public IdempotentRabbitMqConsumerService(Func<CancellationToken, ValueTask<IConnection>> connection, IdempotentProcessor processor, RabbitMqIdempotencyOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(processor);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _connection = connection;
        _processor = processor;
        _options = options;
        _logger = logger;
    }

    /// <summary>Gets the heartbeat the consumer reports its state to, for the consumer health check.</summary>
    public Idempotency.Health.ConsumerHeartbeat? Health { get; init; }

    /// <summary>Gets the clock the consumer uses for its delays and timeouts.</summary>
    /// <value>Defaults to <see langword="null"/>: <see cref="TimeProvider.System"/>.</value>
    public TimeProvider? TimeProvider { get; init; }

    /// <summary>Gets the running consumer once the service has started it.</summary>
    public Task<IdempotentRabbitMqConsumer> Consumer => _consumer.Task;

    /// <inheritdoc/>
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var connection = await _connection(stoppingToken).ConfigureAwait(false);
        var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, _processor, _options, _logger, TimeProvider, stoppingToken).ConfigureAwait(false);
        await using var consumerScope = consumer.ConfigureAwait(false);
        consumer.Health = Health;
        await consumer.StartAsync(stoppingToken).ConfigureAwait(false);
        _consumer.TrySetResult(consumer);
        try
        {
            await consumer.Completion.WaitAsync(stoppingToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // The host is stopping.
        }

        await consumer.StopAsync(CancellationToken.None).ConfigureAwait(false);

        // A consumer that stopped on an error it cannot recover from fails the service (and, by default, the host).
        await consumer.Completion.ConfigureAwait(false);
    }
}
