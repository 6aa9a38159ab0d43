using System.Diagnostics;
using System.Globalization;
using System.Text;
using Confluent.Kafka;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.Kafka.Transactions;

/// <summary>What a transactional handler sees for one input message.</summary>
public sealed class KafkaTransactionContext
{
    private readonly IProducer<byte[], byte[]> _producer;
    private readonly Action<DeliveryReport<byte[], byte[]>> _onReport;
    private int _outputs;

    internal KafkaTransactionContext(ConsumeResult<byte[], byte[]> input, IProducer<byte[], byte[]> producer, Action<DeliveryReport<byte[], byte[]>> onReport)
    {
        Input = input;
        _producer = producer;
        _onReport = onReport;
    }

    /// <summary>Gets the input message.</summary>
    public ConsumeResult<byte[], byte[]> Input { get; }

    /// <summary>
    /// Produces an output inside the current transaction: read-committed consumers see it only if the transaction
    /// commits, together with the input's offset. Unless the message already has an <c>idempotency-key</c> header,
    /// one is added that is stable across retries (<c>topic:partition:offset:n</c> of the input), so a consumer wrapped
    /// by this library deduplicates even if it reads uncommitted data.
    /// </summary>
    /// <param name="topic">The output topic.</param>
    /// <param name="message">The message.</param>
    public void Produce(string topic, Message<byte[], byte[]> message)
    {
        ArgumentNullException.ThrowIfNull(message);
        message.Headers ??= [];
        if (!message.Headers.TryGetLastBytes(KafkaIdempotencyOptions.DefaultKeyHeader, out _))
        {
            var key = string.Create(CultureInfo.InvariantCulture, $"{Input.Topic}:{Input.Partition.Value}:{Input.Offset.Value}:{_outputs}");
            message.Headers.Add(KafkaIdempotencyOptions.DefaultKeyHeader, Encoding.UTF8.GetBytes(key));
        }

        _outputs++;
        _producer.Produce(topic, message, _onReport);
    }
}

/// <summary>
/// Kafka-to-Kafka processing with Kafka transactions, for handlers whose only effects are the messages they produce
/// (no database): the classic consume-transform-produce loop. Each batch of input messages runs in one producer
/// transaction that contains the outputs and the input offsets (<c>SendOffsetsToTransaction</c>); consumers downstream
/// with <c>isolation.level=read_committed</c> see every batch's outputs exactly once, or not at all.
/// </summary>
/// <remarks>
/// <para>A failing handler aborts the transaction; the loop seeks back to the batch's first offsets and runs it again
/// (backoff from <see cref="KafkaTransactionalOptions.Retry"/>). A message that fails every attempt is written to the
/// dead-letter topic inside the next transaction, together with its offset.</para>
/// <para>Zombie fencing: one transactional id per application instance (<see cref="KafkaTransactionalOptions.TransactionalId"/>),
/// plus the consumer group's generation sent with the offsets (KIP-447, brokers 2.5+): a fenced-out instance's
/// offset commit is refused, and a restarted instance with the same id aborts what its previous incarnation left open.</para>
/// <para>Limits: effects outside Kafka (database writes, HTTP calls) are NOT covered; use the idempotent consumer with a
/// store and the outbox for those. Read-uncommitted consumers see aborted outputs.</para>
/// </remarks>
public sealed partial class KafkaTransactionalProcessor : IDisposable
{
    private readonly IConsumer<byte[], byte[]> _consumer;
    private readonly IProducer<byte[], byte[]> _producer;
    private readonly KafkaTransactionalOptions _options;
    private readonly Func<KafkaTransactionContext, CancellationToken, ValueTask> _handler;
    private readonly ILogger _logger;
    private readonly Dictionary<TopicPartitionOffset, (int Attempts, string Error)> _failures = [];
    private volatile bool _rebalanced;
    private long _committed;
    private long _committedMessages;
    private long _aborted;
    private int _started;

    /// <summary>Creates the processor and its consumer and transactional producer.</summary>
    /// <param name="consumerConfig">Consumer settings (bootstrap, group id...). Copied; auto-commit is turned off and isolation set to read_committed.</param>
    /// <param name="producerConfig">Producer settings (bootstrap...). Copied; <see cref="KafkaTransactionalOptions.TransactionalId"/>, idempotence and acks=all are set.</param>
    /// <param name="options">Topics, transactional id, batching, retry; validated here.</param>
    /// <param name="handler">Transforms one input message and produces its outputs through the context.</param>
    /// <param name="logger">Optional logger.</param>
    /// <exception cref="ArgumentException">The options are invalid, or the consumer asks for the cooperative-sticky assignor.</exception>
    public KafkaTransactionalProcessor(ConsumerConfig consumerConfig, ProducerConfig producerConfig, KafkaTransactionalOptions options, Func<KafkaTransactionContext, CancellationToken, ValueTask> handler, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(consumerConfig);
        ArgumentNullException.ThrowIfNull(producerConfig);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(handler);
        var errors = options.GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors), nameof(options));
        }

        // A batch dropped at a rebalance is read again only from the committed offsets; under incremental (cooperative)
        // assignment the partitions that stay assigned keep their fetch position, so the dropped messages would be
        // skipped and the next transaction would commit past them.
        if (consumerConfig.PartitionAssignmentStrategy is { } strategy && strategy.HasFlag(PartitionAssignmentStrategy.CooperativeSticky))
        {
            throw new ArgumentException(
                "KafkaTransactionalProcessor needs an eager partition assignment strategy (Range or RoundRobin): with CooperativeSticky, partitions kept across a rebalance would skip the batch it dropped.",
                nameof(consumerConfig));
        }

        _options = options;
        _handler = handler;
        _logger = logger ?? NullLogger.Instance;
        var consumer = new ConsumerConfig(new Dictionary<string, string>(consumerConfig, StringComparer.Ordinal))
        {
            EnableAutoCommit = false,
            IsolationLevel = IsolationLevel.ReadCommitted,
        };
        var producer = new ProducerConfig(new Dictionary<string, string>(producerConfig, StringComparer.Ordinal))
        {
            TransactionalId = options.TransactionalId,
            EnableIdempotence = true,
            Acks = Acks.All,
        };
        _producer = new ProducerBuilder<byte[], byte[]>(producer).Build();
        _consumer = new ConsumerBuilder<byte[], byte[]>(consumer)
            .SetPartitionsAssignedHandler((_, _) => _rebalanced = true)
            .SetPartitionsRevokedHandler((_, _) => _rebalanced = true)
            .SetPartitionsLostHandler((_, _) => _rebalanced = true)
            .Build();
    }

    /// <summary>Gets how many transactions committed.</summary>
    public long CommittedTransactions => Interlocked.Read(ref _committed);

    /// <summary>Gets how many input messages committed transactions covered.</summary>
    public long CommittedMessages => Interlocked.Read(ref _committedMessages);

    /// <summary>Gets how many transactions were aborted (handler failure, Kafka error, rebalance during commit).</summary>
    public long AbortedTransactions => Interlocked.Read(ref _aborted);

    /// <summary>Runs the loop on a dedicated thread until cancelled; a transaction open at that moment is aborted (its batch is read again next time).</summary>
    /// <param name="cancellationToken">Stops the loop.</param>
    /// <returns>A task that completes when stopped.</returns>
    /// <exception cref="KafkaException">A fatal error (the producer was fenced by another instance with the same transactional id, or authorization failed).</exception>
    public Task RunAsync(CancellationToken cancellationToken = default)
    {
        if (Interlocked.Exchange(ref _started, 1) != 0)
        {
            throw new InvalidOperationException("RunAsync may be called once.");
        }

        return Task.Factory.StartNew(() => RunLoop(cancellationToken), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        _consumer.Dispose();
        _producer.Dispose();
    }

    private void RunLoop(CancellationToken cancellationToken)
    {
        _producer.InitTransactions(_options.OperationTimeout);
        _consumer.Subscribe(_options.Topics);
        try
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                _rebalanced = false;
                var batch = Gather(cancellationToken);
                if (batch.Count == 0 || cancellationToken.IsCancellationRequested)
                {
                    continue;
                }

                if (_rebalanced)
                {
                    // The new assignment starts from the committed offsets: drop what was read under the old one.
                    LogBatchDropped(_logger, batch.Count);
                    continue;
                }

                RunTransaction(batch, cancellationToken);
            }
        }
        finally
        {
            try
            {
                _consumer.Close();
            }
#pragma warning disable CA1031 // Closing is best effort at shutdown.
            catch (Exception exception)
#pragma warning restore CA1031
            {
                LogCloseFailed(_logger, exception);
            }
        }
    }

    private List<ConsumeResult<byte[], byte[]>> Gather(CancellationToken cancellationToken)
    {
        var batch = new List<ConsumeResult<byte[], byte[]>>();
        Stopwatch? since = null;
        while (batch.Count < _options.BatchSize && !cancellationToken.IsCancellationRequested)
        {
            var wait = since is null ? TimeSpan.FromMilliseconds(100) : _options.MaxBatchDelay - since.Elapsed;
            if (wait <= TimeSpan.Zero)
            {
                break;
            }

            var result = _consumer.Consume(wait);
            if (result is null)
            {
                if (since is null)
                {
                    return batch;
                }

                continue;
            }

            if (result.IsPartitionEOF)
            {
                continue;
            }

            since ??= Stopwatch.StartNew();
            batch.Add(result);
        }

        return batch;
    }

    private void RunTransaction(List<ConsumeResult<byte[], byte[]>> batch, CancellationToken cancellationToken)
    {
        Error? deliveryError = null;
        void OnReport(DeliveryReport<byte[], byte[]> report)
        {
            if (report.Error.IsError)
            {
                Interlocked.CompareExchange(ref deliveryError, report.Error, null);
            }
        }

        TopicPartitionOffset? failed = null;
        var failedAttempts = 0;
        _producer.BeginTransaction();
        try
        {
            foreach (var input in batch)
            {
                var at = input.TopicPartitionOffset;
                if (_failures.TryGetValue(at, out var failure) && failure.Attempts >= _options.Retry.MaxAttempts)
                {
                    _producer.Produce(input.Topic + _options.DeadLetterTopicSuffix, DeadLetter(input, failure), OnReport);
                    continue;
                }

                try
                {
                    _handler(new KafkaTransactionContext(input, _producer, OnReport), cancellationToken).AsTask().GetAwaiter().GetResult();
                }
                catch (Exception exception) when (!cancellationToken.IsCancellationRequested)
                {
                    failedAttempts = failure.Attempts + 1;
                    _failures[at] = (failedAttempts, exception.GetType().Name + ": " + exception.Message);
                    failed = at;
                    LogHandlerFailed(_logger, exception, at.ToString(), failedAttempts);
                    throw;
                }
            }

            // Stopping mid-batch aborts: the next owner reads the batch again from the committed offsets.
            cancellationToken.ThrowIfCancellationRequested();
            var offsets = batch
                .GroupBy(r => r.TopicPartition)
                .Select(g => new TopicPartitionOffset(g.Key, g.Max(r => r.Offset.Value) + 1))
                .ToList();
            _producer.SendOffsetsToTransaction(offsets, _consumer.ConsumerGroupMetadata, _options.OperationTimeout);
            Commit();
            if (Volatile.Read(ref deliveryError) is { } error)
            {
                // Not expected: a committed transaction's outputs were all written. Kept as a guard.
                throw new KafkaException(error);
            }

            Interlocked.Increment(ref _committed);
            Interlocked.Add(ref _committedMessages, batch.Count);
            foreach (var input in batch)
            {
                _failures.Remove(input.TopicPartitionOffset);
            }
        }
#pragma warning disable CA1031 // Every failure aborts the transaction and re-reads the batch; fatal ones are rethrown.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            Abort();
            Interlocked.Increment(ref _aborted);
            SeekBack(batch);
            if (exception is KafkaException { Error.IsFatal: true })
            {
                throw;
            }

            if (cancellationToken.IsCancellationRequested)
            {
                return;
            }

            if (failed is null)
            {
                LogTransactionAborted(_logger, exception, batch.Count);
            }

            var delay = failed is null ? _options.Retry.GetDelay(1) : _options.Retry.GetDelay(failedAttempts);
            cancellationToken.WaitHandle.WaitOne(delay);
        }
    }

    private void Commit()
    {
        var stopwatch = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                _producer.CommitTransaction(_options.OperationTimeout);
                return;
            }
            catch (KafkaRetriableException) when (stopwatch.Elapsed < _options.OperationTimeout)
            {
                // The commit's outcome is unknown: calling it again is how librdkafka finishes it.
            }
        }
    }

    private void Abort()
    {
        try
        {
            _producer.AbortTransaction(_options.OperationTimeout);
        }
        catch (KafkaException exception) when (!exception.Error.IsFatal)
        {
            // Retry once; a second failure surfaces.
            LogAbortRetried(_logger, exception);
            _producer.AbortTransaction(_options.OperationTimeout);
        }
    }

    private void SeekBack(List<ConsumeResult<byte[], byte[]>> batch)
    {
        foreach (var first in batch.GroupBy(r => r.TopicPartition).Select(g => g.MinBy(r => r.Offset.Value)!))
        {
            try
            {
                _consumer.Seek(first.TopicPartitionOffset);
            }
            catch (KafkaException exception)
            {
                // Not assigned any more (rebalance): the new owner starts from the committed offset.
                LogSeekFailed(_logger, exception, first.TopicPartitionOffset.ToString());
            }
        }
    }

    private static Message<byte[], byte[]> DeadLetter(ConsumeResult<byte[], byte[]> input, (int Attempts, string Error) failure)
    {
        var headers = new Headers();
        if (input.Message.Headers is not null)
        {
            foreach (var header in input.Message.Headers)
            {
                headers.Add(header.Key, header.GetValueBytes());
            }
        }

        headers.Add("x-original-topic", Encoding.UTF8.GetBytes(input.Topic));
        headers.Add("x-original-partition", Encoding.UTF8.GetBytes(input.Partition.Value.ToString(CultureInfo.InvariantCulture)));
        headers.Add("x-original-offset", Encoding.UTF8.GetBytes(input.Offset.Value.ToString(CultureInfo.InvariantCulture)));
        headers.Add("x-attempts", Encoding.UTF8.GetBytes(failure.Attempts.ToString(CultureInfo.InvariantCulture)));
        headers.Add("x-error", Encoding.UTF8.GetBytes(failure.Error));
        return new Message<byte[], byte[]> { Key = input.Message.Key, Value = input.Message.Value, Headers = headers };
    }

    [LoggerMessage(EventId = 2100, Level = LogLevel.Information, Message = "Rebalance while gathering: {Count} message(s) dropped, they are read again from the committed offsets")]
    private static partial void LogBatchDropped(ILogger logger, int count);

    [LoggerMessage(EventId = 2101, Level = LogLevel.Warning, Message = "Handler failed on {Input} (attempt {Attempt}); transaction aborted, batch re-read")]
    private static partial void LogHandlerFailed(ILogger logger, Exception exception, string input, int attempt);

    [LoggerMessage(EventId = 2102, Level = LogLevel.Warning, Message = "Transaction of {Count} message(s) aborted; batch re-read")]
    private static partial void LogTransactionAborted(ILogger logger, Exception exception, int count);

    [LoggerMessage(EventId = 2103, Level = LogLevel.Warning, Message = "AbortTransaction failed; retrying once")]
    private static partial void LogAbortRetried(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 2104, Level = LogLevel.Debug, Message = "Seek back to {Position} failed")]
    private static partial void LogSeekFailed(ILogger logger, Exception exception, string position);

    [LoggerMessage(EventId = 2105, Level = LogLevel.Warning, Message = "Consumer close failed")]
    private static partial void LogCloseFailed(ILogger logger, Exception exception);
}
