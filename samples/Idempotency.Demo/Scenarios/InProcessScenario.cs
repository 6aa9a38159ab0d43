using System.Collections.Concurrent;
using System.Diagnostics;
using Idempotency.Demo.Ledgers;

namespace Idempotency.Demo.Scenarios;

/// <summary>
/// An at-least-once broker simulated in process: a message is removed only when acknowledged, and a consumer
/// "crash" drops the in-flight message unacknowledged (so it is redelivered) either in the middle of the handler
/// (the transaction rolls back) or after the commit and before the ack (the redelivery is a duplicate).
/// </summary>
internal sealed class InProcessScenario : IDemoScenario
{
    public string Broker => "inprocess";

    public async Task<DemoRow> RunAsync(IDemoLedger ledger, Workload workload, int crashes, Action<double> progress, CancellationToken cancellationToken)
    {
        var queue = new ConcurrentQueue<Delivery>(workload.Messages.Select((m, i) => new Delivery(i, m.Key, m.Body, Attempt: 1)));
        var random = new Random(11);
        var crashPlan = new ConcurrentDictionary<int, CrashPoint>();
        foreach (var index in Enumerable.Range(0, workload.Messages.Count).OrderBy(_ => random.Next()).Take(crashes))
        {
            crashPlan[index] = random.Next(2) == 0 ? CrashPoint.MidHandler : CrashPoint.AfterCommitBeforeAck;
        }

        long delivered = 0, redeliveries = 0, duplicates = 0, acked = 0, crashed = 0;
        var handler = IdempotentHandler.Create(async (context, ct) =>
        {
            await ledger.ApplyAsync(context, ct);
            var delivery = context.GetNative<Delivery>();
            if (delivery.Attempt == 1 && crashPlan.TryGetValue(delivery.Sequence, out var point) && point == CrashPoint.MidHandler)
            {
                throw new SimulatedCrashException();
            }
        });
        var processor = new IdempotentProcessor(ledger.Store, handler, new IdempotencyOptions { HandlerName = "demo-orders" });
        var stopwatch = Stopwatch.StartNew();

        async Task ConsumeAsync()
        {
            while (queue.TryDequeue(out var delivery))
            {
                Interlocked.Increment(ref delivered);
                if (delivery.Attempt > 1)
                {
                    Interlocked.Increment(ref redeliveries);
                }

                var message = new IncomingMessage(delivery.Key, delivery.Body) { Broker = Broker, Destination = "orders", Redelivered = delivery.Attempt > 1, DeliveryAttempt = delivery.Attempt, Native = delivery };
                var result = await processor.ProcessAsync(message, cancellationToken);
                var crashedHere = delivery.Attempt == 1 && crashPlan.ContainsKey(delivery.Sequence);
                if (crashedHere || !result.IsCommitted)
                {
                    // The consumer died (or the message failed) before its ack: the broker redelivers it.
                    if (crashedHere)
                    {
                        Interlocked.Increment(ref crashed);
                    }

                    queue.Enqueue(delivery with { Attempt = delivery.Attempt + 1 });
                    continue;
                }

                if (result.Outcome == ProcessingOutcome.Duplicate)
                {
                    Interlocked.Increment(ref duplicates);
                }

                progress(Interlocked.Increment(ref acked) / (double)workload.Messages.Count);
            }
        }

        await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(ConsumeAsync, cancellationToken)));
        var elapsed = stopwatch.Elapsed;
        var (orders, applications, _) = await ledger.ReadAsync(cancellationToken);
        return new DemoRow(Broker, ledger.StoreName, workload.Messages.Count, workload.UniqueKeys, delivered, redeliveries, duplicates, applications,
            Lost: workload.UniqueKeys - orders, DeadLettered: 0, Crashes: (int)crashed, MessagesPerSecond: delivered / elapsed.TotalSeconds);
    }

    private sealed record Delivery(int Sequence, string Key, byte[] Body, int Attempt);

    private enum CrashPoint
    {
        MidHandler,
        AfterCommitBeforeAck,
    }

    private sealed class SimulatedCrashException : Exception
    {
        public SimulatedCrashException()
            : base("simulated consumer crash in the middle of the handler")
        {
        }
    }
}
