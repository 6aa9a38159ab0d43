using Idempotency.Delivery;

namespace Idempotency.Kafka.Consuming;

/// <summary>
/// Processes one partition's messages strictly in offset order and hands every result to the
/// <see cref="DeliveryEngine"/>, which decides (settle, retry, dead-letter, wait for the store) and counts attempts;
/// the worker keeps the order and reports what settled to the lane's settled prefix.
/// </summary>
/// <typeparam name="TKey">The message key type.</typeparam>
/// <typeparam name="TValue">The message value type.</typeparam>
/// <remarks>
/// Three paths: one message alone; a batch of ready messages in one store transaction (natural batching), which commits
/// up to its first failure, settles that one alone and goes on with the rest, in order; and, with batching off while
/// duplicates are frequent, one look-up of the queued keys that settles the duplicates without a transaction.
/// </remarks>
internal sealed class PartitionWorker<TKey, TValue>
{
    /// <summary>How many queued messages of a partition one look-up checks while duplicates are frequent.</summary>
    private const int LookAheadMessages = 100;

    private readonly PartitionLane<TKey, TValue> _lane;
    private readonly LaneContext<TKey, TValue> _context;
    private readonly DeliveryEngine _engine;
    private readonly KafkaIdempotencyOptions _options;

    /// <summary>Creates the worker of a lane.</summary>
    /// <param name="lane">The lane.</param>
    /// <param name="context">What the consumer's lanes share.</param>
    public PartitionWorker(PartitionLane<TKey, TValue> lane, LaneContext<TKey, TValue> context)
    {
        _lane = lane;
        _context = context;
        _engine = context.Engine;
        _options = context.Options;
    }

    /// <summary>Processes queued messages until the lane stops taking work.</summary>
    /// <returns>A task that completes when the lane stopped; it faults only on a bug (the loop then stops loudly).</returns>
    public async Task RunAsync()
    {
        var reader = _lane.Queue.Reader;
        var batch = new List<KafkaDelivery<TKey, TValue>>(_options.BatchSize);
        try
        {
            while (await reader.WaitToReadAsync(_lane.StopTaking.Token).ConfigureAwait(false))
            {
                batch.Clear();
                if (_options.BatchSize == 1 && _lane.Buffered > 1 && _context.Processor.DuplicatesLikely)
                {
                    while (batch.Count < LookAheadMessages && reader.TryRead(out var queued))
                    {
                        batch.Add(queued);
                    }

                    if (!await HandleLookedUpAsync(batch).ConfigureAwait(false))
                    {
                        return;
                    }

                    continue;
                }

                await FillBatchAsync(batch).ConfigureAwait(false);
                if (batch.Count == 0)
                {
                    continue;
                }

                // A batch settles its prefix itself, so the position can move up to a failing message while that one
                // still retries or waits for its dead-letter.
                if (batch.Count > 1)
                {
                    if (!await HandleBatchAsync(batch).ConfigureAwait(false))
                    {
                        return;
                    }

                    continue;
                }

                if (!await HandleOneAsync(batch[0]).ConfigureAwait(false))
                {
                    return;
                }

                _lane.Settled(batch[0].Offset, 1);
            }
        }
        catch (OperationCanceledException) when (_lane.StopTaking.IsCancellationRequested || _lane.Abort.IsCancellationRequested)
        {
            // Stopped (revoke, loss or shutdown): what did not settle is redelivered to whoever owns the partition next.
        }
    }

    /// <summary>The 1-based handler attempt the next processing of a message is, from the engine's ledger.</summary>
    private int NextAttempt(KafkaDelivery<TKey, TValue> delivery) => _engine.NextAttempt(_lane.Port, delivery);

    private IncomingMessage ToIncoming(KafkaDelivery<TKey, TValue> delivery, bool withPosition = true, bool keyLookedUp = false) =>
        _context.Reader.ToIncoming(delivery.Result!, delivery.Body, NextAttempt(delivery), delivery.Reread, withPosition, keyLookedUp);

    /// <summary>
    /// Per-message mode while duplicates are frequent (a replay, a group re-reading a topic): the keys of the queued
    /// messages are looked up in one round trip, duplicates settle without a transaction, and the others are processed
    /// one by one, in order, as usual. False when the partition stopped first.
    /// </summary>
    private async ValueTask<bool> HandleLookedUpAsync(List<KafkaDelivery<TKey, TValue>> queued)
    {
        // Built once, marked looked up: a message the look-up does not settle goes on to processing as it is.
        var readable = new List<IncomingMessage>(queued.Count);
        foreach (var delivery in queued)
        {
            if (!delivery.IsUnreadable)
            {
                readable.Add(ToIncoming(delivery, keyLookedUp: true));
            }
        }

        var found = await InSlotAsync(static (processor, messages, ct) => processor.LookUpProcessedAsync(messages, ct), readable, static found => found.Count(r => r is not null)).ConfigureAwait(false);
        var next = 0;
        foreach (var delivery in queued)
        {
            var message = delivery.IsUnreadable ? null : readable[next];
            var known = delivery.IsUnreadable ? null : found[next++];

            // A looked-up duplicate is acknowledged, or dead-lettered or retried by the payload-mismatch policy. A retry has
            // not settled the message: it goes on to processing like any other, its look-up counted as an attempt.
            bool done;
            if (known is null)
            {
                done = await HandleOneAsync(delivery, message).ConfigureAwait(false);
            }
            else
            {
                var settled = await _engine.SettleAsync(_lane.Port, delivery, known, cancellationToken: _lane.StopTaking.Token).ConfigureAwait(false);
                done = settled.Outcome == SettleOutcome.Settled || await HandleOneAsync(delivery).ConfigureAwait(false);
            }

            if (!done)
            {
                return false;
            }

            _lane.Settled(delivery.Offset, 1);
        }

        return true;
    }

    /// <summary>Processes one message until it is committed or dead-lettered; false when the partition stopped first.</summary>
    /// <param name="delivery">The message.</param>
    /// <param name="lookedUp">The message as <see cref="HandleLookedUpAsync"/> built and looked it up without finding its key, for the first try.</param>
    private async ValueTask<bool> HandleOneAsync(KafkaDelivery<TKey, TValue> delivery, IncomingMessage? lookedUp = null)
    {
        if (delivery.IsUnreadable)
        {
            // It never reaches the handler: the engine dead-letters it at once, counts it and tells the observers.
            var unreadable = _context.Reader.Unreadable(delivery);
            while ((await _engine.SettleAsync(_lane.Port, delivery, unreadable, cancellationToken: _lane.StopTaking.Token).ConfigureAwait(false)).Outcome != SettleOutcome.Settled)
            {
            }

            return true;
        }

        var message = lookedUp ?? ToIncoming(delivery);
        while (true)
        {
            var result = await InSlotAsync(static (processor, message, ct) => processor.ProcessAsync(message, ct), message, static _ => 1).ConfigureAwait(false);
            var settled = await _engine.SettleAsync(_lane.Port, delivery, result, message.DeliveryAttempt, _lane.StopTaking.Token).ConfigureAwait(false);
            if (settled.Outcome == SettleOutcome.Settled)
            {
                return true;
            }

            // Processed again in place (a partition is a log); the engine's ledger says which attempt that is.
            message = ToIncoming(delivery);
        }
    }

    /// <summary>
    /// Processes a batch in store transactions, in offset order: each transaction commits the messages up to the first
    /// that does not commit, which is then settled alone (retried in place, or dead-lettered) before the rest of the
    /// batch goes on, so no message takes effect before an earlier one. False when the partition stopped first.
    /// </summary>
    private async ValueTask<bool> HandleBatchAsync(List<KafkaDelivery<TKey, TValue>> batch)
    {
        var prefix = new BatchPrefix(batch.ConvertAll(d => d.Offset), _lane.Settled);
        var pending = batch;
        var unreadable = new Queue<KafkaDelivery<TKey, TValue>>();
        if (batch.Exists(d => d.IsUnreadable))
        {
            pending = new List<KafkaDelivery<TKey, TValue>>(batch.Count);
            foreach (var delivery in batch)
            {
                if (delivery.IsUnreadable)
                {
                    // It has no effect to order, but no position may pass it before its dead-letter.
                    prefix.NotSettled(delivery.Offset);
                    unreadable.Enqueue(delivery);
                }
                else
                {
                    pending.Add(delivery);
                }
            }
        }

        var next = 0;
        while (next < pending.Count)
        {
            var messages = new IncomingMessage[pending.Count - next];
            for (var i = 0; i < messages.Length; i++)
            {
                messages[i] = ToIncoming(pending[next + i], withPosition: prefix.MayCarryPosition(pending[next + i].Offset));
            }

            var results = await InSlotAsync(static (processor, messages, ct) => processor.ProcessBatchInOrderAsync(messages, ct), messages, static results => results.Count).ConfigureAwait(false);
            var committed = 0;
            while (committed < results.Count && results[committed].IsCommitted)
            {
                // Committed with the batch: the engine acknowledges it (the prefix moves below, in order).
                await _engine.SettleAsync(_lane.Port, pending[next + committed], results[committed], messages[committed].DeliveryAttempt, _lane.StopTaking.Token).ConfigureAwait(false);
                committed++;
            }

            next += committed;
            if (committed == results.Count)
            {
                continue;
            }

            var stopped = results[committed];
            var delivery = pending[next];
            if (stopped.Outcome is ProcessingOutcome.StoreUnavailable or ProcessingOutcome.StoreMisconfigured)
            {
                // The store's failure, not the message's: wait for the store, then process the rest of the batch again.
                _engine.Gate.Close(stopped);
                await _engine.WaitForStoreAsync(_lane.Port, _lane.StopTaking.Token).ConfigureAwait(false);
                _lane.ResumeAfterStore();
                continue;
            }

            // Everything before it has settled; it now gets its retries or its dead-letter before any later message runs.
            if (!await SettleUnreadableBeforeAsync(unreadable, prefix, delivery.Offset).ConfigureAwait(false))
            {
                return false;
            }

            prefix.NotSettled(delivery.Offset);
            prefix.SettledBefore(delivery.Offset);
            var settled = await _engine.SettleAsync(_lane.Port, delivery, stopped, messages[committed].DeliveryAttempt, _lane.StopTaking.Token).ConfigureAwait(false);
            if (settled.Outcome != SettleOutcome.Settled && !await HandleOneAsync(delivery).ConfigureAwait(false))
            {
                return false;
            }

            next++;
        }

        if (!await SettleUnreadableBeforeAsync(unreadable, prefix, long.MaxValue).ConfigureAwait(false))
        {
            return false;
        }

        prefix.SettledAll();
        return true;
    }

    /// <summary>Dead-letters, in offset order, the batch's unreadable messages before <paramref name="offset"/>; false when the partition stopped first.</summary>
    private async ValueTask<bool> SettleUnreadableBeforeAsync(Queue<KafkaDelivery<TKey, TValue>> unreadable, BatchPrefix prefix, long offset)
    {
        while (unreadable.TryPeek(out var delivery) && delivery.Offset < offset)
        {
            unreadable.Dequeue();
            prefix.SettledBefore(delivery.Offset);
            if (!await HandleOneAsync(delivery).ConfigureAwait(false))
            {
                return false;
            }
        }

        return true;
    }

    private async ValueTask FillBatchAsync(List<KafkaDelivery<TKey, TValue>> batch)
    {
        var stop = _lane.StopTaking.Token;
        await ReadyBatch.FillAsync(_lane.Queue.Reader, batch, _options.BatchSize, _options.BatchMaxWait, _context.Time, stop).ConfigureAwait(false);

        // A partition that stops while its batch lingers leaves the batch unprocessed: its messages are not settled,
        // so the next owner (or this consumer after the assignment) reads them again from the committed position.
        if (stop.IsCancellationRequested && _options.BatchMaxWait > TimeSpan.Zero && batch.Count < _options.BatchSize)
        {
            throw new OperationCanceledException(stop);
        }
    }

    /// <summary>
    /// Runs one pipeline call in a concurrency slot (the wait for one ends when the partition stops taking work), cancelled
    /// by the partition's abort; reports its duration and how many messages it covered.
    /// </summary>
    private async ValueTask<TResult> InSlotAsync<TArgument, TResult>(Func<IdempotentProcessor, TArgument, CancellationToken, ValueTask<TResult>> call, TArgument argument, Func<TResult, int> messages)
    {
        await _context.Slots.WaitAsync(_lane.StopTaking.Token).ConfigureAwait(false);
        var started = _context.Time.GetTimestamp();
        TResult result;
        try
        {
            result = await call(_context.Processor, argument, _lane.Abort.Token).ConfigureAwait(false);
        }
        finally
        {
            _context.Slots.Release();
        }

        _context.Hooks.DurationObserver?.Invoke(messages(result), _context.Time.GetElapsedTime(started));
        return result;
    }
}
