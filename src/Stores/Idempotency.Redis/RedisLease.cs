using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// One store transaction's claim on its keys: the token written into each key it claims and the status key that says
/// whether those claims are in progress (<c>P</c>, TTL the lease), committed (<c>D</c>) or abandoned (gone).
/// </summary>
/// <param name="Token">The token, 32 lowercase hex characters.</param>
/// <param name="Status">The status key, <c>{StatusPrefix}{Token}</c>.</param>
/// <param name="StatusPrefix">What the status key of any token is named with in this key space.</param>
internal sealed record RedisLease(string Token, RedisKey Status, string StatusPrefix)
{
    /// <summary>Gets the token as the ASCII bytes claim values carry.</summary>
    public byte[] TokenBytes { get; } = System.Text.Encoding.ASCII.GetBytes(Token);
}
