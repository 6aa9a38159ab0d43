using Amazon.SQS.Model;
using Idempotency.Health;

namespace Idempotency.Sqs;

/// <summary>
/// Keeps received messages invisible while their handlers run: every <see cref="SqsIdempotencyOptions.HeartbeatFraction"/>
/// of the visibility timeout it sets their visibility to a full timeout again, until disposed. Without it a slow batch
/// would become visible and be received by another poller, which the store would then hold back as in progress.
/// </summary>
internal sealed class SqsVisibilityExtender : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    private SqsVisibilityExtender(SqsQueueCalls calls, SqsIdempotencyOptions options, SqsWorkerStatistics statistics, ConsumerHeartbeat? health, TimeProvider time, IReadOnlyList<Message> messages)
    {
        _loop = ExtendAsync(calls, options, statistics, health, time, messages, _stop.Token);
    }

    /// <summary>Starts extending the visibility of <paramref name="messages"/>.</summary>
    public static SqsVisibilityExtender Start(SqsQueueCalls calls, SqsIdempotencyOptions options, SqsWorkerStatistics statistics, ConsumerHeartbeat? health, TimeProvider time, IReadOnlyList<Message> messages) =>
        new(calls, options, statistics, health, time, messages);

    /// <summary>Stops extending (the messages are settled next) and waits for a change in flight.</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        await _loop.ConfigureAwait(false);
        _stop.Dispose();
    }

    private static async Task ExtendAsync(SqsQueueCalls calls, SqsIdempotencyOptions options, SqsWorkerStatistics statistics, ConsumerHeartbeat? health, TimeProvider time, IReadOnlyList<Message> messages, CancellationToken cancellationToken)
    {
        var period = options.VisibilityTimeout * options.HeartbeatFraction;
        var entries = messages.Select(m => (m, options.VisibilityTimeoutSeconds)).ToList();
        try
        {
            while (true)
            {
                await Task.Delay(period, time, cancellationToken).ConfigureAwait(false);
                health?.Beat();
                var failures = await calls.ChangeVisibilityAsync(entries, cancellationToken).ConfigureAwait(false);
                statistics.AddVisibilityExtensions(entries.Count - failures);
                statistics.AddVisibilityExtensionFailures(failures);
            }
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // Processing ended.
        }
    }
}
