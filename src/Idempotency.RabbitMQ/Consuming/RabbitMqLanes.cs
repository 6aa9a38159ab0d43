using System.Threading.Channels;
using Idempotency.Delivery;
using Microsoft.Extensions.Logging;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>
/// The consumer's intake: the delivery callback writes each delivery to a buffer (bounded in practice by the prefetch),
/// and <see cref="IdempotentConsumerOptions.Concurrency"/> workers take what is ready (natural batching), process it
/// through the engine and settle it through the port. Unordered across workers, in delivery order within one.
/// </summary>
internal sealed class RabbitMqLanes
{
    private readonly RabbitMqIdempotencyOptions _options;
    private readonly DeliveryEngine _engine;
    private readonly RabbitMqPort _port;
    private readonly ILogger _logger;
    private readonly TimeProvider _time;
    private readonly Func<bool> _paused;
    private readonly Action<Exception> _failed;
    private readonly CancellationToken _stopping;
    private readonly CancellationTokenSource _processing = new();

    // Unbounded in code, bounded in practice: the broker never has more than the prefetch count outstanding per consumer.
    private readonly Channel<RabbitMqWork> _buffer = Channel.CreateUnbounded<RabbitMqWork>(new UnboundedChannelOptions { SingleReader = false, SingleWriter = false });
    private Task[] _workers = [];
    private int _inFlight;

    public RabbitMqLanes(RabbitMqIdempotencyOptions options, DeliveryEngine engine, RabbitMqPort port, ILogger logger, TimeProvider time, Func<bool> paused, Action<Exception> failed, CancellationToken stopping)
    {
        _options = options;
        _engine = engine;
        _port = port;
        _logger = logger;
        _time = time;
        _paused = paused;
        _failed = failed;
        _stopping = stopping;
    }

    /// <summary>Gets how many deliveries are buffered or being processed.</summary>
    public int Pending => _buffer.Reader.Count + Volatile.Read(ref _inFlight);

    /// <summary>Gets how many deliveries are being processed.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Starts the workers.</summary>
    public void Start()
    {
        var workers = new Task[_options.Concurrency];
        for (var i = 0; i < workers.Length; i++)
        {
            workers[i] = Task.Run(WorkerAsync, CancellationToken.None);
        }

        _workers = workers;
    }

    /// <summary>Buffers a delivery; returns it to the queue when the lanes are closed (stopping).</summary>
    public ValueTask AddAsync(RabbitMqWork work) => _buffer.Writer.TryWrite(work) ? ValueTask.CompletedTask : _port.NackAsync(work);

    /// <summary>
    /// Takes no more deliveries and lets the in-flight ones settle within <paramref name="timeout"/>; then cancels them
    /// (they roll back and are requeued, never acknowledged). What is still buffered is requeued unprocessed.
    /// </summary>
    public async Task DrainAsync(TimeSpan timeout, CancellationToken cancellationToken)
    {
        _buffer.Writer.TryComplete();
        var drain = new ShutdownDrain($"RabbitMQ consumer of queue {_options.Queue}", _time, _logger);
        await drain.DrainAsync(Task.WhenAll(_workers), timeout, _processing.Cancel, cancellationToken).ConfigureAwait(false);
        _processing.Dispose();
    }

    private async Task WorkerAsync()
    {
        var reader = _buffer.Reader;
        var batch = new List<RabbitMqWork>(Math.Min(_options.BatchSize, 1024));
        try
        {
            while (await reader.WaitToReadAsync().ConfigureAwait(false))
            {
                batch.Clear();
                await ReadyBatch.FillAsync(reader, batch, _options.BatchSize, _options.BatchMaxWait, _time, _stopping).ConfigureAwait(false);
                if (batch.Count > 0)
                {
                    await ProcessAsync(batch).ConfigureAwait(false);
                }
            }
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            Log.WorkerFailed(_logger, exception, _options.Queue);
            _failed(exception);
        }
    }

    private async Task ProcessAsync(List<RabbitMqWork> batch)
    {
        var works = new List<RabbitMqWork>(batch.Count);
        foreach (var work in batch)
        {
            if (!await SkipAsync(work).ConfigureAwait(false))
            {
                works.Add(work);
            }
        }

        if (works.Count == 0)
        {
            return;
        }

        Interlocked.Add(ref _inFlight, works.Count);
        try
        {
            IReadOnlyList<ProcessingResult> results;
            try
            {
                results = await _engine.ProcessAsync(works.ConvertAll(w => w.Message), _processing.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (_processing.IsCancellationRequested)
            {
                // Cut at the shutdown timeout: whatever committed before comes back as a duplicate.
                foreach (var work in works)
                {
                    await _port.NackAsync(work).ConfigureAwait(false);
                }

                return;
            }

            // The committed deliveries' acks are collected and sent together once every one of them is decided.
            var group = new RabbitMqAckGroup(_port);
            List<Task>? slow = null;
            for (var i = 0; i < works.Count; i++)
            {
                var settling = _engine.SettleAsync(group, works[i], results[i], works[i].Message.DeliveryAttempt, _stopping).AsTask();
                if (results[i].IsCommitted)
                {
                    await settling.ConfigureAwait(false);
                }
                else
                {
                    // Retries and pauses wait before requeueing; let them wait side by side.
                    (slow ??= []).Add(settling);
                }
            }

            await group.FlushAsync().ConfigureAwait(false);
            if (slow is not null)
            {
                await Task.WhenAll(slow).ConfigureAwait(false);
            }
        }
        finally
        {
            Interlocked.Add(ref _inFlight, -works.Count);
        }
    }

    /// <summary>Returns deliveries that must not be processed now (stopping, or paused for the store) to the queue.</summary>
    private async ValueTask<bool> SkipAsync(RabbitMqWork work)
    {
        if (_stopping.IsCancellationRequested)
        {
            _engine.Attempts.RecordRequeue(work.AttemptId);
            await _port.NackAsync(work).ConfigureAwait(false);
            return true;
        }

        if (_paused())
        {
            // Handed back after a short wait, so that deliveries made before the subscription was cancelled do not
            // bounce between broker and consumer; a stop cuts the wait short.
            _engine.Attempts.RecordRequeue(work.AttemptId);
            await _port.DelayAsync(_engine.Processor.StoreUnavailableBackoff.InitialDelay).ConfigureAwait(false);
            await _port.NackAsync(work).ConfigureAwait(false);
            return true;
        }

        return false;
    }
}
