using Idempotency.Outbox;

namespace Idempotency.TestSupport;

/// <summary>Publishes, then throws: a relay that dies after the broker confirmed and before the rows were marked sent.</summary>
/// <param name="inner">The real publisher.</param>
/// <param name="crashes">How many publishes throw after succeeding.</param>
public sealed class CrashAfterPublish(IOutboxPublisher inner, int crashes) : IOutboxPublisher
{
    private int _left = crashes;

    /// <inheritdoc/>
    public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
    {
        await inner.PublishAsync(messages, cancellationToken).ConfigureAwait(false);
        if (Interlocked.Decrement(ref _left) >= 0)
        {
            throw new InvalidOperationException("relay died after publishing, before marking sent");
        }
    }
}
