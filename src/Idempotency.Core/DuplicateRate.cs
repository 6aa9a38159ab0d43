namespace Idempotency;

/// <summary>
/// A lock-free moving average of how many recent single messages were duplicates: above a threshold it pays to look a
/// key up before running the handler (<see cref="Threshold"/> for <see cref="ClaimTiming.AtCommit"/>,
/// <see cref="ClaimFirstThreshold"/> for <see cref="ClaimTiming.BeforeHandler"/>).
/// </summary>
/// <remarks>
/// Why a quarter at commit: with the key looked up first, a new message costs one round trip more and a duplicate one
/// round trip in all; without it a new message saves that round trip but a duplicate costs the handler, the refused
/// commit and a rollback (about three more). Looking up first wins once duplicates are more than about one in four.
/// Why a half before the handler: there a duplicate without a look-up costs the claim and a rollback (two round trips
/// against one), so the look-up wins only once duplicates outnumber new messages.
/// </remarks>
internal sealed class DuplicateRate
{
    private const int One = 1 << 16;

    // Each message moves the average 1/32 of the way: it follows about the last 32 messages.
    private const int Shift = 5;

    private int _scaled;

    /// <summary>The share of duplicates above which keys are looked up first.</summary>
    public const double Threshold = 0.25;

    /// <summary>The share of duplicates above which keys are looked up before they are claimed (<see cref="ClaimTiming.BeforeHandler"/>).</summary>
    public const double ClaimFirstThreshold = 0.5;

    /// <summary>Gets whether duplicates are frequent enough to look keys up first under <see cref="ClaimTiming.AtCommit"/>.</summary>
    public bool IsHigh => IsAbove(Threshold);

    /// <summary>Whether the estimate is above a share.</summary>
    /// <param name="share">A share between 0 and 1.</param>
    /// <returns><see langword="true"/> when more than that share of recent messages were duplicates.</returns>
    public bool IsAbove(double share) => Volatile.Read(ref _scaled) > (int)(One * share);

    /// <summary>Gets the current estimate, between 0 and 1.</summary>
    public double Value => Volatile.Read(ref _scaled) / (double)One;

    /// <summary>Adds one message to the average.</summary>
    /// <param name="duplicate">Whether it was a duplicate.</param>
    public void Record(bool duplicate)
    {
        var target = duplicate ? One : 0;
        int current, next;
        do
        {
            current = Volatile.Read(ref _scaled);
            next = current + ((target - current) >> Shift);
        }
        while (Interlocked.CompareExchange(ref _scaled, next, current) != current);
    }
}
