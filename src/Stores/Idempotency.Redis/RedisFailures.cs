using System.Net.Sockets;
using Idempotency.Storage;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// What an error of the Redis store's own work means (it is never the message's fault): an outage to wait out, or a
/// misconfiguration to report with its fix. Shared by the Redis store and the layered store.
/// </summary>
internal static class RedisFailures
{
    /// <summary>Whether an error of the store's own Redis work is an outage: connection, timeout, or a server that is loading, read-only, failing over or full.</summary>
    /// <param name="exception">The error (its inner exceptions are searched).</param>
    /// <returns><see langword="true"/> for an outage.</returns>
    public static bool IsUnavailable(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            switch (current)
            {
                case RedisCommandFailedException:
                    return false;
                case IdempotencyStoreUnavailableException:
                case RedisConnectionException:
                case RedisTimeoutException:
                case SocketException:
                case TimeoutException:
                    return true;
                case RedisServerException server when IsTransientServerError(server.Message):
                    return true;
            }
        }

        return false;
    }

    /// <summary>Authentication, ACL and refused commands or scripts are misconfigurations; everything else an outage.</summary>
    /// <param name="exception">The error of the store's own work.</param>
    /// <returns>What kind of store failure it is, with the fix to name.</returns>
    public static StoreFailure Classify(Exception exception)
    {
        ArgumentNullException.ThrowIfNull(exception);
        return FindMisconfiguration(exception) ?? StoreFailure.Outage(exception);
    }

    /// <summary>
    /// The misconfiguration an error or any error under it reports: StackExchange.Redis wraps the failures of several
    /// endpoints in an <see cref="AggregateException"/>, and one refused login among them is the origin to report.
    /// </summary>
    private static StoreFailure? FindMisconfiguration(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is AggregateException aggregate)
            {
                foreach (var inner in aggregate.InnerExceptions)
                {
                    if (FindMisconfiguration(inner) is { } found)
                    {
                        return found;
                    }
                }

                return null;
            }

            switch (current)
            {
                case RedisCommandFailedException failed:
                    // The handler's write, refused by Redis at EXEC after the key was recorded: the handler's failure.
                    return new StoreFailure(StoreFailureKind.WriteRejected, failed.Message);
                case RedisConnectionException { FailureType: ConnectionFailureType.AuthenticationFailure }:
                    return new StoreFailure(StoreFailureKind.Misconfiguration, $"Redis refused the credentials ({current.Message}): check the password (and user) of the store's connection string");
                case NotSupportedException refused:
                    // The store's own refusal of what this deployment cannot do (the outbox on a cluster, a server older than 7.0).
                    return new StoreFailure(StoreFailureKind.Misconfiguration, refused.Message);
                case RedisServerException server when IsMisconfigurationError(server.Message):
                    return new StoreFailure(StoreFailureKind.Misconfiguration, $"Redis refused the store's command ({server.Message}): check the credentials, the user's ACL (it needs EVALSHA/EVAL, GET, SET, DEL, MULTI/EXEC on the store's keys) and that scripting is enabled");
            }
        }

        return null;
    }

    private static bool IsMisconfigurationError(string message) =>
        message.StartsWith("NOAUTH", StringComparison.Ordinal)
        || message.StartsWith("WRONGPASS", StringComparison.Ordinal)
        || message.StartsWith("NOPERM", StringComparison.Ordinal)
        || message.StartsWith("CROSSSLOT", StringComparison.Ordinal)
        || message.StartsWith("ERR unknown command", StringComparison.Ordinal)
        || message.Contains("scripts are disabled", StringComparison.OrdinalIgnoreCase);

    private static bool IsTransientServerError(string message) =>
        message.StartsWith("LOADING", StringComparison.Ordinal)
        || message.StartsWith("READONLY", StringComparison.Ordinal)
        || message.StartsWith("MASTERDOWN", StringComparison.Ordinal)
        || message.StartsWith("TRYAGAIN", StringComparison.Ordinal)
        || message.StartsWith("CLUSTERDOWN", StringComparison.Ordinal)
        || message.StartsWith("BUSY", StringComparison.Ordinal)
        || message.StartsWith("OOM", StringComparison.Ordinal); // maxmemory reached under noeviction: full, not a poison message
}
