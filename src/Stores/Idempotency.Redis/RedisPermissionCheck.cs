using Idempotency.Storage;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// The store's start-up check (<see cref="RedisIdempotencyStore.CheckAsync(CancellationToken)"/>): that the server answers,
/// and that the connection's user may run what the store runs, without writing anything.
/// </summary>
/// <remarks>
/// <c>EVALSHA</c> of a script that cannot exist (<c>NOSCRIPT</c> means permitted, <c>NOPERM</c> not), then one <c>EVAL</c>
/// asking Redis (<c>redis.acl_check_cmd</c>) whether this user may run each command of the store's scripts and
/// transactions (<c>SET</c>, <c>GET</c>, <c>DEL</c>, <c>PEXPIRE</c>, <c>MGET</c>, <c>WATCH</c>, <c>MULTI</c>, <c>EXEC</c>,
/// and <c>WAIT</c> with <see cref="RedisIdempotencyStoreOptions.WaitForReplicas"/>) on keys under the store's prefix. The
/// outbox stream's <c>XADD</c> is not checked: an application that sends no messages needs no such permission.
/// </remarks>
internal static class RedisPermissionCheck
{
    /// <summary>A SHA-1 no script has: <c>EVALSHA</c> of it answers <c>NOSCRIPT</c> when permitted, <c>NOPERM</c> when not.</summary>
    private const string AbsentScriptSha = "0000000000000000000000000000000000000000";

    /// <summary>Pings, probes <c>EVALSHA</c>, then asks Redis about every command of the store's scripts and transactions.</summary>
    /// <param name="store">The store.</param>
    /// <param name="cancellationToken">Cancels between the steps.</param>
    /// <returns>A misconfiguration naming the refused command and key, or <see langword="null"/> when everything is permitted.</returns>
    /// <exception cref="RedisException">The server did not answer or refused a step; the caller classifies it.</exception>
    public static async Task<StoreFailure?> RunAsync(RedisIdempotencyStore store, CancellationToken cancellationToken)
    {
        var database = store.Database;
        await database.PingAsync().ConfigureAwait(false);
        cancellationToken.ThrowIfCancellationRequested();
        try
        {
            await database.ExecuteAsync("EVALSHA", AbsentScriptSha, 0).ConfigureAwait(false);
        }
        catch (RedisServerException exception) when (exception.Message.StartsWith("NOSCRIPT", StringComparison.Ordinal))
        {
            // Permitted, and nothing ran.
        }

        cancellationToken.ThrowIfCancellationRequested();
        var claimKey = store.GetKey("probe", "probe");
        var refused = (string?)await database.ExecuteAsync(
            "EVAL",
            RedisScripts.PermissionProbe,
            0,
            (string)claimKey!,
            store.KeySpace.StatusPrefixFor(claimKey) + "probe",
            store.Options.WaitForReplicas > 0 ? 1 : 0).ConfigureAwait(false);
        return string.IsNullOrEmpty(refused)
            ? null
            : new StoreFailure(StoreFailureKind.Misconfiguration, $"The Redis user of the store's connection may not run {refused} (ACL): grant it the store's commands (EVAL, EVALSHA, GET, SET, DEL, PEXPIRE, MGET, WATCH, MULTI, EXEC) on the keys '{store.Options.KeyPrefix}:*'");
    }
}
