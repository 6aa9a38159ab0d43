using System.Text;
using Idempotency.Outbox;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ.Outbox;

/// <summary>Where an outbox message goes in RabbitMQ.</summary>
/// <param name="Exchange">The exchange; empty for the default exchange (routing key = queue name).</param>
/// <param name="RoutingKey">The routing key.</param>
public readonly record struct RabbitMqRoute(string Exchange, string RoutingKey)
{
    /// <summary>
    /// The default mapping of <see cref="OutboxRecord.Destination"/>: <c>"exchange/routing-key"</c> publishes to that
    /// exchange with that routing key (the first <c>/</c> splits them; AMQP exchange names cannot contain one); a
    /// destination without <c>/</c> is a queue name, published through the default exchange.
    /// </summary>
    /// <param name="record">The outbox record.</param>
    /// <returns>The route.</returns>
    public static RabbitMqRoute FromDestination(OutboxRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        var slash = record.Destination.IndexOf('/', StringComparison.Ordinal);
        return slash < 0
            ? new RabbitMqRoute(string.Empty, record.Destination)
            : new RabbitMqRoute(record.Destination[..slash], record.Destination[(slash + 1)..]);
    }
}

/// <summary>Options of a <see cref="RabbitMqOutboxPublisher"/>.</summary>
public sealed class RabbitMqOutboxPublisherOptions
{
    /// <summary>Gets or sets how a record's destination maps to exchange and routing key.</summary>
    /// <value>Defaults to <see cref="RabbitMqRoute.FromDestination"/>: <c>"exchange/routing-key"</c>, or a queue name.</value>
    public Func<OutboxRecord, RabbitMqRoute> Route { get; set; } = RabbitMqRoute.FromDestination;

    /// <summary>Gets or sets a value indicating whether messages are published mandatory, so an unroutable message fails the batch instead of vanishing.</summary>
    /// <value>Defaults to <see langword="true"/>.</value>
    public bool Mandatory { get; set; } = true;

    /// <summary>Gets or sets how long a batch waits for its publisher confirms.</summary>
    /// <value>Defaults to 30 s; at least 100 ms.</value>
    public TimeSpan ConfirmTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Returns one message per invalid option, naming it.</summary>
    /// <returns>An empty list when valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        if (Route is null)
        {
            errors.Add($"{nameof(Route)} must not be null.");
        }

        if (ConfirmTimeout < TimeSpan.FromMilliseconds(100))
        {
            errors.Add($"{nameof(ConfirmTimeout)} must be at least 100 ms (was {ConfirmTimeout}).");
        }

        return errors;
    }
}

/// <summary>
/// Publishes outbox messages to RabbitMQ on a channel with publisher confirms: persistent, with
/// <c>BasicProperties.MessageId</c> = <see cref="OutboxRecord.MessageId"/> (the key an
/// <see cref="IdempotentRabbitMqConsumer"/> reads by default; also sent as header <c>idempotency-key</c>), the record's
/// key as header <c>message-key</c>, and the record's headers. Messages of a batch go out in order on one channel, and
/// <see cref="PublishAsync"/> returns when every one was confirmed; a nack, an unroutable return (mandatory), a channel
/// closure or the confirm time-out throws, and the channel is replaced for the next batch.
/// </summary>
/// <remarks>The connection belongs to the caller (use one with automatic recovery); the publisher owns its channel. Calls are serialized.</remarks>
public sealed class RabbitMqOutboxPublisher : IOutboxPublisher, IAsyncDisposable
{
    /// <summary>The header that carries the outbox record's key.</summary>
    public const string MessageKeyHeader = "message-key";

    private readonly IConnection _connection;
    private readonly RabbitMqOutboxPublisherOptions _options;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private IChannel? _channel;
    private PendingConfirms? _pending;

    /// <summary>Creates a publisher.</summary>
    /// <param name="connection">An open connection.</param>
    /// <param name="options">Routing, mandatory flag, confirm time-out; validated here.</param>
    public RabbitMqOutboxPublisher(IConnection connection, RabbitMqOutboxPublisherOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(connection);
        _options = options ?? new RabbitMqOutboxPublisherOptions();
        var errors = _options.GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        _connection = connection;
    }

    /// <inheritdoc/>
    public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (messages.Count == 0)
        {
            return;
        }

        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var channel = await GetChannelAsync(cancellationToken).ConfigureAwait(false);
            var pending = new PendingConfirms();
            Volatile.Write(ref _pending, pending);
            try
            {
                foreach (var record in messages)
                {
                    var route = _options.Route(record);
                    var properties = new BasicProperties
                    {
                        MessageId = record.MessageId.ToString("D"),
                        Persistent = true,
                        Headers = BuildHeaders(record),
                    };
                    pending.Expect(await channel.GetNextPublishSequenceNumberAsync(cancellationToken).ConfigureAwait(false));
                    await channel.BasicPublishAsync(route.Exchange, route.RoutingKey, _options.Mandatory, properties, record.Payload, cancellationToken).ConfigureAwait(false);
                }

                pending.AllPublished();
                await pending.Completion.WaitAsync(_options.ConfirmTimeout, cancellationToken).ConfigureAwait(false);
            }
            catch
            {
                // Late confirms of this batch must not leak into the next one: start it on a fresh channel.
                await DropChannelAsync().ConfigureAwait(false);
                throw;
            }
            finally
            {
                Volatile.Write(ref _pending, null);
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await DropChannelAsync().ConfigureAwait(false);
        _gate.Dispose();
    }

    private static Dictionary<string, object?> BuildHeaders(OutboxRecord record)
    {
        var headers = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (record.Headers is not null)
        {
            foreach (var (name, value) in record.Headers)
            {
                headers[name] = Encoding.UTF8.GetBytes(value);
            }
        }

        headers[MessageKeyHeader] = Encoding.UTF8.GetBytes(record.Key);
        headers[OutboxRecord.IdempotencyKeyHeader] = Encoding.UTF8.GetBytes(record.MessageId.ToString("D"));
        return headers;
    }

    private async ValueTask<IChannel> GetChannelAsync(CancellationToken cancellationToken)
    {
        if (_channel is { IsOpen: true } open)
        {
            return open;
        }

        await DropChannelAsync().ConfigureAwait(false);
        var channel = await _connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: false), cancellationToken).ConfigureAwait(false);
        channel.BasicAcksAsync += (_, e) =>
        {
            Volatile.Read(ref _pending)?.Confirm(e.DeliveryTag, e.Multiple, null);
            return Task.CompletedTask;
        };
        channel.BasicNacksAsync += (_, e) =>
        {
            Volatile.Read(ref _pending)?.Confirm(e.DeliveryTag, e.Multiple, "the broker nacked message " + e.DeliveryTag);
            return Task.CompletedTask;
        };
        channel.BasicReturnAsync += (_, e) =>
        {
            Volatile.Read(ref _pending)?.Fail($"unroutable: exchange '{e.Exchange}', routing key '{e.RoutingKey}' ({e.ReplyCode} {e.ReplyText})");
            return Task.CompletedTask;
        };
        channel.ChannelShutdownAsync += (_, e) =>
        {
            Volatile.Read(ref _pending)?.Fail($"channel closed: {e.ReplyCode} {e.ReplyText}");
            return Task.CompletedTask;
        };
        _channel = channel;
        return channel;
    }

    private async ValueTask DropChannelAsync()
    {
        var channel = _channel;
        _channel = null;
        if (channel is null)
        {
            return;
        }

        try
        {
            await channel.DisposeAsync().ConfigureAwait(false);
        }
#pragma warning disable CA1031 // A broken channel may fail to close; it is abandoned either way.
        catch (Exception)
#pragma warning restore CA1031
        {
        }
    }

    private sealed class PendingConfirms
    {
        private readonly object _lock = new();
        private readonly SortedSet<ulong> _outstanding = [];
        private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private bool _allPublished;
        private string? _failure;

        public Task Completion => _completion.Task;

        public void Expect(ulong sequenceNumber)
        {
            lock (_lock)
            {
                _outstanding.Add(sequenceNumber);
            }
        }

        public void AllPublished()
        {
            lock (_lock)
            {
                _allPublished = true;
                TryComplete();
            }
        }

        public void Confirm(ulong tag, bool multiple, string? nack)
        {
            lock (_lock)
            {
                if (multiple)
                {
                    _outstanding.RemoveWhere(s => s <= tag);
                }
                else
                {
                    _outstanding.Remove(tag);
                }

                _failure ??= nack;
                TryComplete();
            }
        }

        public void Fail(string reason)
        {
            lock (_lock)
            {
                _failure ??= reason;
                _completion.TrySetException(new RabbitMqOutboxPublishException(_failure));
            }
        }

        private void TryComplete()
        {
            if (_failure is not null)
            {
                _completion.TrySetException(new RabbitMqOutboxPublishException(_failure));
            }
            else if (_allPublished && _outstanding.Count == 0)
            {
                _completion.TrySetResult();
            }
        }
    }
}

/// <summary>Thrown when RabbitMQ did not confirm every message of an outbox batch; nothing is marked sent.</summary>
public sealed class RabbitMqOutboxPublishException : IdempotencyException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="reason">What went wrong.</param>
    public RabbitMqOutboxPublishException(string reason)
        : base("RabbitMQ did not confirm every outbox message: " + reason)
    {
    }

    /// <inheritdoc/>
    public override bool IsTransient => true;
}
