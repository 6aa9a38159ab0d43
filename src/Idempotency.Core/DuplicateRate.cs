namespace Idempotency;

/// <summary>
/// A lock-free moving average of how many recent single messages were duplicates, for <see cref="ClaimTiming.AtCommit"/>:
/// above <see cref="Threshold"/> it pays to look a key up before running the handler.
/// </summary>
/// <remarks>
/// Why a quarter: with the key looked up first, a new message costs one round trip more and a duplicate one round trip
/// in all; without it a new message saves that round trip but a duplicate costs the handler, the refused commit and a
/// rollback (about three more). Looking up first wins once duplicates are more than about one in four.
/// </remarks>
internal sealed class DuplicateRate
{
    private const int One = 1 << 16;

    // Each message moves the average 1/32 of the way: it follows about the last 32 messages.
    private const int Shift = 5;

    private int _scaled;

    /// <summary>The share of duplicates above which keys are looked up first.</summary>
    public const double Threshold = 0.25;

    /// <summary>Gets whether duplicates are frequent enough to look keys up first.</summary>
    public bool IsHigh => Volatile.Read(ref _scaled) > (int)(One * Threshold);

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
