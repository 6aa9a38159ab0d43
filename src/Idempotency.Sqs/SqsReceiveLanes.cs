using Amazon.SQS.Model;
using Idempotency.Delivery;

namespace Idempotency.Sqs;

/// <summary>
/// The lanes of one SQS receive, and natural batching within them: what a receive returned is ready at once, so up to
/// <see cref="IdempotentConsumerOptions.BatchSize"/> messages share one store transaction.
/// </summary>
/// <remarks>
/// <para>A standard queue is unordered: the receive is cut into transactions of <c>BatchSize</c> that run concurrently.</para>
/// <para>
/// A FIFO queue keeps order per <c>MessageGroupId</c>, and the first message of a group that does not commit holds back
/// the rest of its group (they get no result and are released behind it). A transaction therefore never holds two
/// messages of one group: a failing handler is isolated by redoing the transaction without it, and a later message of
/// its group in that transaction would commit ahead of it. So a FIFO receive runs in waves: the next message of every
/// group that is not held back, <c>BatchSize</c> per transaction. With <c>BatchSize</c> 1 each group runs on its own.
/// </para>
/// </remarks>
internal static class SqsReceiveLanes
{
    /// <summary>Processes a receive, filling <paramref name="results"/>; a message left without a result was not processed.</summary>
    public static Task ProcessAsync(DeliveryEngine engine, IReadOnlyList<IncomingMessage> incoming, ProcessingResult?[] results, bool fifo, int batchSize, CancellationToken cancellationToken)
    {
        if (!fifo)
        {
            var all = Enumerable.Range(0, incoming.Count).ToList();
            return ProcessChunksAsync(engine, incoming, all, results, batchSize, cancellationToken);
        }

        var groups = incoming.Select((message, index) => (Group: SqsMessageReader.GroupId((Message)message.Native!) ?? string.Empty, Index: index))
            .GroupBy(g => g.Group, StringComparer.Ordinal)
            .Select(g => g.Select(x => x.Index).ToList())
            .ToList();
        return batchSize == 1
            ? Task.WhenAll(groups.Select(group => ProcessGroupAsync(engine, incoming, group, results, cancellationToken)))
            : ProcessWavesAsync(engine, incoming, groups, results, batchSize, cancellationToken);
    }

    private static Task ProcessChunksAsync(DeliveryEngine engine, IReadOnlyList<IncomingMessage> incoming, List<int> indexes, ProcessingResult?[] results, int batchSize, CancellationToken cancellationToken) =>
        Task.WhenAll(indexes.Chunk(batchSize).Select(chunk => ProcessChunkAsync(engine, incoming, chunk, results, cancellationToken)));

    private static async Task ProcessChunkAsync(DeliveryEngine engine, IReadOnlyList<IncomingMessage> incoming, int[] chunk, ProcessingResult?[] results, CancellationToken cancellationToken)
    {
        var processed = await engine.ProcessAsync(Array.ConvertAll(chunk, i => incoming[i]), cancellationToken).ConfigureAwait(false);
        for (var j = 0; j < chunk.Length; j++)
        {
            results[chunk[j]] = processed[j];
        }
    }

    /// <summary>One group on its own, in order, stopping at the first message that does not commit.</summary>
    private static async Task ProcessGroupAsync(DeliveryEngine engine, IReadOnlyList<IncomingMessage> incoming, List<int> group, ProcessingResult?[] results, CancellationToken cancellationToken)
    {
        foreach (var index in group)
        {
            var result = (await engine.ProcessAsync([incoming[index]], cancellationToken).ConfigureAwait(false))[0];
            results[index] = result;
            if (!result.IsCommitted)
            {
                return;
            }
        }
    }

    /// <summary>The n-th message of every group still going, in transactions of at most <paramref name="batchSize"/>, until every group is done or held.</summary>
    private static async Task ProcessWavesAsync(DeliveryEngine engine, IReadOnlyList<IncomingMessage> incoming, List<List<int>> groups, ProcessingResult?[] results, int batchSize, CancellationToken cancellationToken)
    {
        var held = new bool[groups.Count];
        for (var wave = 0; ; wave++)
        {
            var next = new List<int>(groups.Count);
            for (var g = 0; g < groups.Count; g++)
            {
                if (!held[g] && wave < groups[g].Count)
                {
                    next.Add(groups[g][wave]);
                }
            }

            if (next.Count == 0)
            {
                return;
            }

            await ProcessChunksAsync(engine, incoming, next, results, batchSize, cancellationToken).ConfigureAwait(false);
            for (var g = 0; g < groups.Count; g++)
            {
                if (!held[g] && wave < groups[g].Count && results[groups[g][wave]] is not { IsCommitted: true })
                {
                    held[g] = true;
                }
            }
        }
    }
}
