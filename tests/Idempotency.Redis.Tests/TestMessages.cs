using System.Text;
using Idempotency.Storage;

namespace Idempotency.Redis.Tests;

internal static class TestMessages
{
    public static IncomingMessage Message(string key, string body = "{\"amount\":5}") =>
        new(key, Encoding.UTF8.GetBytes(body)) { Destination = "orders", Broker = "test" };

    public static IncomingMessage Redelivery(string key, string body = "{\"amount\":5}") =>
        new(key, Encoding.UTF8.GetBytes(body)) { Destination = "orders", Broker = "test", Redelivered = true, DeliveryAttempt = 2 };

    public static IdempotencyOptions Options(string handler = "orders", PayloadMismatchPolicy policy = PayloadMismatchPolicy.TreatAsDuplicate) =>
        new() { HandlerName = handler, PayloadMismatchPolicy = policy };

    public static ClaimRequest Claim(string key, string handler = "orders", string body = "{\"amount\":5}") =>
        new(handler, key, PayloadFingerprint.Compute(Encoding.UTF8.GetBytes(body)), DateTimeOffset.UtcNow.AddDays(1));

    /// <summary>
    /// Processes messages in batches, retrying what an adapter would redeliver without spending an attempt (another
    /// worker holds the key, the lease was lost, the store did not answer: see DeliveryPolicy) until every message has a
    /// final result or the deadline passes.
    /// </summary>
    public static async Task<List<ProcessingResult>> ProcessUntilCommittedAsync(IdempotentProcessor processor, IReadOnlyList<IncomingMessage> messages, int batchSize, int workers, TimeSpan timeout)
    {
        var results = new System.Collections.Concurrent.ConcurrentBag<ProcessingResult>();
        var queue = new System.Collections.Concurrent.ConcurrentQueue<IncomingMessage>(messages);
        var deadline = DateTime.UtcNow + timeout;
        await Task.WhenAll(Enumerable.Range(0, workers).Select(_ => Task.Run(async () =>
        {
            var batch = new List<IncomingMessage>(batchSize);
            while (true)
            {
                batch.Clear();
                while (batch.Count < batchSize && queue.TryDequeue(out var next))
                {
                    batch.Add(next);
                }

                if (batch.Count == 0)
                {
                    return;
                }

                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException($"Messages still in progress after {timeout}.");
                }

                var held = false;
                foreach (var result in await processor.ProcessBatchAsync(batch))
                {
                    if (result.Outcome is ProcessingOutcome.InProgress or ProcessingOutcome.LeaseLost or ProcessingOutcome.StoreUnavailable)
                    {
                        queue.Enqueue(result.Message); // not settled: the adapter would retry it later
                        held = true;
                    }
                    else
                    {
                        results.Add(result);
                    }
                }

                if (held)
                {
                    await Task.Delay(5);
                }
            }
        })));
        return [.. results];
    }
}
