using System.Runtime.InteropServices;

namespace Idempotency;

/// <summary>Byte arrays for APIs that take <c>byte[]</c> (database parameters, broker clients) from memory the library holds.</summary>
internal static class ByteArrays
{
    /// <summary>
    /// The array behind <paramref name="memory"/> when it covers that whole array, or else a copy. The caller must only
    /// read the array: it may be the one the memory wraps.
    /// </summary>
    /// <param name="memory">The bytes.</param>
    /// <returns>An array with exactly those bytes.</returns>
    public static byte[] AsArray(ReadOnlyMemory<byte> memory) =>
        MemoryMarshal.TryGetArray(memory, out var segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length
            ? segment.Array
            : memory.ToArray();
}
