namespace Idempotency.Redis;

/// <summary>Redis Cluster hash slots: CRC16 (XMODEM) of the key's hash tag, modulo 16384, and one short tag per slot.</summary>
internal static class ClusterSlots
{
    /// <summary>The number of hash slots of a Redis Cluster.</summary>
    public const int Count = 16384;

    private static readonly Lazy<string[]> Tags = new(BuildTags);

    /// <summary>Gets the shortest base-36 string whose slot is <paramref name="slot"/> (the first found counting up).</summary>
    public static string Tag(int slot) => Tags.Value[slot];

    /// <summary>The slot of a string used as a whole as the hash input (a tag's content).</summary>
    public static int SlotOf(ReadOnlySpan<char> tag)
    {
        ushort crc = 0;
        foreach (var c in tag)
        {
            // Tags here are ASCII; a key's bytes are its UTF-8 encoding, which is the same for ASCII.
            crc ^= (ushort)((byte)c << 8);
            for (var bit = 0; bit < 8; bit++)
            {
                crc = (crc & 0x8000) != 0 ? (ushort)((crc << 1) ^ 0x1021) : (ushort)(crc << 1);
            }
        }

        return crc % Count;
    }

    private static string[] BuildTags()
    {
        var tags = new string[Count];
        var left = Count;
        Span<char> buffer = stackalloc char[8];
        for (var n = 0; left > 0; n++)
        {
            var length = 0;
            var value = n;
            do
            {
                buffer[length++] = "0123456789abcdefghijklmnopqrstuvwxyz"[value % 36];
                value /= 36;
            }
            while (value > 0);

            var tag = buffer[..length];
            var slot = SlotOf(tag);
            if (tags[slot] is null)
            {
                tags[slot] = new string(tag);
                left--;
            }
        }

        return tags;
    }
}
