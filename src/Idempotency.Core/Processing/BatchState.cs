using Idempotency.Storage;

namespace Idempotency.Processing;

/// <summary>What is known about each message of a batch while it is processed: its claim, the first copy it follows, its result so far.</summary>
/// <param name="count">The number of messages.</param>
internal sealed class BatchState(int count)
{
    /// <summary>
    /// Gets a value indicating whether the batch is one ordered lane (a partition): processing stops at the first message
    /// that does not commit, and no later message takes effect before it settles.
    /// </summary>
    public bool InOrder { get; init; }

    /// <summary>Gets or sets how many messages, from the first, have a result to report: all of them, or in order up to and including the first that did not commit.</summary>
    public int End { get; set; } = count;

    /// <summary>
    /// Records <paramref name="result"/> for the message at <paramref name="index"/> and returns whether processing must
    /// stop there: in order, no message after one that did not commit may be processed in this call.
    /// </summary>
    /// <param name="index">The message's index.</param>
    /// <param name="result">Its result.</param>
    /// <returns><see langword="true"/> when the batch is in order and the message did not commit.</returns>
    public bool StopsAt(int index, ProcessingResult result)
    {
        Results[index] = result;
        return InOrder && !result.IsCommitted;
    }

    /// <summary>Gets each message's result; <see langword="null"/> while unknown.</summary>
    public ProcessingResult?[] Results { get; } = new ProcessingResult?[count];

    /// <summary>Gets each message's claim (default for a rejected key).</summary>
    public ClaimRequest[] Claims { get; } = new ClaimRequest[count];

    /// <summary>Gets, for a later copy of a key inside the batch, the index of its first copy.</summary>
    public int?[] FollowerOf { get; } = new int?[count];

    /// <summary>
    /// Gets a value indicating whether the batch's keys were looked up just before and not found: that look-up counted
    /// them in the duplicate rate, so the claim counts only a duplicate that raced past it.
    /// </summary>
    public bool KeysLookedUp { get; init; }

    /// <summary>
    /// Whether every message before <paramref name="index"/> has settled (committed, or not yet known to have failed):
    /// a consumer position recorded past an unsettled message would let a restart skip it.
    /// </summary>
    public bool AllSettledBefore(int index) => index <= FirstUnsettled();

    /// <summary>The index of the first message known not to have committed, or <see cref="int.MaxValue"/>.</summary>
    public int FirstUnsettled()
    {
        for (var i = 0; i < Results.Length; i++)
        {
            if (Results[i] is { IsCommitted: false })
            {
                return i;
            }
        }

        return int.MaxValue;
    }

    /// <summary>Gives every pending message without a final result (unknown, or processed in an attempt that did not commit) the result <paramref name="create"/> makes, and clears the pending list.</summary>
    public void MarkUnresolved(List<int> pending, Func<int, ProcessingResult> create)
    {
        foreach (var index in pending)
        {
            if (Results[index] is null || Results[index]!.Outcome == ProcessingOutcome.Processed)
            {
                Results[index] = create(index);
            }
        }

        pending.Clear();
    }
}
