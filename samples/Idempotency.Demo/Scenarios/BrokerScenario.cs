using System.Diagnostics;
using Idempotency.Demo.Ledgers;

namespace Idempotency.Demo.Scenarios;

/// <summary>A consumer incarnation: the real idempotent consumer of one adapter, running in this process.</summary>
internal interface IConsumerRun : IAsyncDisposable
{
    /// <summary>Dies abruptly: no graceful shutdown, nothing more acknowledged/committed/deleted.</summary>
    Task CrashAsync();

    /// <summary>Graceful shutdown (the last incarnation).</summary>
    Task StopAsync();
}

/// <summary>
/// One real broker end to end: produce the workload (re-sent copies included), then run the adapter's idempotent
/// consumer in this process and kill it abruptly <c>crashes</c> times at random points, each time in the middle of a
/// handler whose business write is already in the (uncommitted) transaction, and start a fresh consumer; the last one
/// runs until the broker is drained. The row comes from the pipeline's own metrics and from the business state.
/// </summary>
internal abstract class BrokerScenario : IDemoScenario
{
    private static readonly TimeSpan CrashWait = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan DrainWait = TimeSpan.FromSeconds(90);

    public abstract string Broker { get; }

    public async Task<DemoRow> RunAsync(IDemoLedger ledger, Workload workload, int crashes, Action<double> progress, CancellationToken cancellationToken)
    {
        var name = $"demo-{Broker}-{ledger.StoreName}-{RunId.Value}";
        using var counters = new OutcomeCounters(name);
        await ProduceAsync(name, workload, cancellationToken);

        // Crash points: the N-th handler run (counted over all incarnations), spread over 5%..90% of the work.
        var random = new Random();
        var unique = workload.UniqueKeys;
        var crashAt = Enumerable.Range(0, crashes)
            .Select(_ => (long)random.Next(Math.Max(1, unique / 20), Math.Max(2, unique * 9 / 10)))
            .Order()
            .ToArray();
        long handlerRuns = 0;
        var crashed = 0;
        var stopwatch = Stopwatch.StartNew();

        using var reporter = new CancellationTokenSource();
        var reporting = Task.Run(async () =>
        {
            while (!reporter.IsCancellationRequested)
            {
                progress(Math.Min(0.99, (counters.Processed + counters.Duplicates) / (double)workload.Messages.Count));
                await Task.Delay(200, reporter.Token).ContinueWith(_ => { }, TaskScheduler.Default);
            }
        }, CancellationToken.None);

        try
        {
            for (var incarnation = 0; incarnation <= crashAt.Length; incarnation++)
            {
                long? threshold = incarnation < crashAt.Length ? crashAt[incarnation] : null;
                var crash = new CrashTrigger();
                var handler = IdempotentHandler.Create(async (context, ct) =>
                {
                    await ledger.ApplyAsync(context, ct);
                    var run = Interlocked.Increment(ref handlerRuns);
                    if (threshold is long at && run >= at && crash.TryFire())
                    {
                        // The process "freezes" here, business write done but not committed, until it is killed.
                        await crash.Dead.WaitAsync(ct);
                        throw new SimulatedCrashException();
                    }
                });
                var processor = new IdempotentProcessor(ledger.Store, handler, new IdempotencyOptions { HandlerName = name });
                var consumer = await StartConsumerAsync(name, processor, cancellationToken);
                await using (consumer)
                {
                    if (threshold is not null)
                    {
                        await Task.WhenAny(crash.Fired, Task.Delay(CrashWait, cancellationToken));
                        await consumer.CrashAsync();
                        crash.Kill();
                        if (crash.Fired.IsCompleted)
                        {
                            crashed++;
                        }

                        continue;
                    }

                    // The last incarnation: until every key has its effect and the broker holds nothing unacknowledged.
                    var deadline = Stopwatch.StartNew();
                    while (deadline.Elapsed < DrainWait)
                    {
                        var (orders, _, _) = await ledger.ReadAsync(cancellationToken);
                        if (orders >= unique && await IsDrainedAsync(name, cancellationToken))
                        {
                            break;
                        }

                        await Task.Delay(250, cancellationToken);
                    }

                    await consumer.StopAsync();
                }
            }
        }
        finally
        {
            await reporter.CancelAsync();
            await reporting;
        }

        var elapsed = stopwatch.Elapsed;
        var (applied, applications, _) = await ledger.ReadAsync(cancellationToken);
        await CleanupAsync(name);
        var delivered = counters.Delivered;
        return new DemoRow(Broker, ledger.StoreName, workload.Messages.Count, unique, delivered, Math.Max(0, delivered - workload.Messages.Count),
            counters.Duplicates, applications, Lost: unique - applied, counters.DeadLettered, crashed, delivered / elapsed.TotalSeconds);
    }

    /// <summary>Sends every message of the workload (copies included) with its idempotency key where the adapter looks by default.</summary>
    protected abstract Task ProduceAsync(string name, Workload workload, CancellationToken cancellationToken);

    protected abstract Task<IConsumerRun> StartConsumerAsync(string name, IdempotentProcessor processor, CancellationToken cancellationToken);

    /// <summary>True when the broker holds nothing unacknowledged for the run (all acked, committed or deleted).</summary>
    protected abstract Task<bool> IsDrainedAsync(string name, CancellationToken cancellationToken);

    protected virtual Task CleanupAsync(string name) => Task.CompletedTask;

    private sealed class CrashTrigger
    {
        private readonly TaskCompletionSource _fired = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _dead = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _state;

        public Task Fired => _fired.Task;

        public Task Dead => _dead.Task;

        public bool TryFire()
        {
            if (Interlocked.CompareExchange(ref _state, 1, 0) != 0)
            {
                return false;
            }

            _fired.TrySetResult();
            return true;
        }

        public void Kill() => _dead.TrySetResult();
    }

    private sealed class SimulatedCrashException : Exception
    {
        public SimulatedCrashException()
            : base("simulated consumer crash: the process died in the middle of the handler")
        {
        }
    }
}

/// <summary>One id per demo process: queue, topic, table and key-prefix names are unique per run.</summary>
internal static class RunId
{
    public static string Value { get; } = $"{DateTime.UtcNow:HHmmss}{Random.Shared.Next(0x1000):x3}";
}
