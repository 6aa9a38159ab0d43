using Idempotency.Postgres;
using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// Redis in front of PostgreSQL: Redis holds the in-flight lease and a completed marker that filters duplicates
/// without touching PostgreSQL; the PostgreSQL claim in the handler's business transaction stays the guarantee.
/// </summary>
/// <remarks>
/// <para>Claim: a completed marker in Redis answers Duplicate (with the stored fingerprint, which the processor checks);
/// a lease held by another worker answers in progress; otherwise this worker takes the lease and claims the key in
/// PostgreSQL, in the transaction the handler writes in (<c>context.GetNpgsqlTransaction()</c>).</para>
/// <para>Commit: the lease must not be held by another token (else <see cref="ClaimLostException"/> and the
/// PostgreSQL transaction rolls back); then the PostgreSQL commit, which is the guarantee; then, best effort, the
/// completed marker in Redis.</para>
/// <para>If Redis is unreachable the store carries on with PostgreSQL alone: only the filter and the early stop of a
/// second worker are lost, never the guarantee.</para>
/// </remarks>
public sealed class LayeredIdempotencyStore : IIdempotencyStore, IIdempotencyKeyAdmin
{
    /// <summary>Creates the layered store.</summary>
    /// <param name="redis">The Redis connection.</param>
    /// <param name="redisOptions">The Redis layer's options (prefix, retention of the markers, lease); validated here.</param>
    /// <param name="postgres">The PostgreSQL store, the source of truth.</param>
    /// <param name="logger">Optional logger.</param>
    /// <exception cref="ArgumentException">A Redis option is invalid; the message names it.</exception>
    public LayeredIdempotencyStore(IConnectionMultiplexer redis, RedisIdempotencyStoreOptions redisOptions, PostgresIdempotencyStore postgres, ILogger? logger = null)
        : this(new RedisIdempotencyStore(redis, redisOptions, logger), postgres)
    {
    }

    /// <summary>Creates the layered store over an existing Redis store.</summary>
    /// <param name="redis">The Redis store used as lease and filter.</param>
    /// <param name="postgres">The PostgreSQL store, the source of truth.</param>
    public LayeredIdempotencyStore(RedisIdempotencyStore redis, PostgresIdempotencyStore postgres)
    {
        ArgumentNullException.ThrowIfNull(redis);
        ArgumentNullException.ThrowIfNull(postgres);
        Redis = redis;
        Postgres = postgres;
    }

    /// <inheritdoc/>
    public string Name => "redis+postgres";

    /// <summary>Gets the Redis layer.</summary>
    public RedisIdempotencyStore Redis { get; }

    /// <summary>Gets the PostgreSQL store.</summary>
    public PostgresIdempotencyStore Postgres { get; }

    /// <inheritdoc/>
    public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();

        // PostgreSQL is opened only once a key gets past the Redis filter, so duplicates cost it nothing.
        return ValueTask.FromResult<IIdempotencyTransaction>(new LayeredIdempotencyTransaction(this));
    }

    /// <inheritdoc/>
    public bool IsUnavailable(Exception exception) => Postgres.IsUnavailable(exception) || RedisIdempotencyStore.IsRedisUnavailable(exception);

    /// <inheritdoc/>
    public int MaxKeyBytes => Math.Min(Postgres.MaxKeyBytes, ((IIdempotencyStore)Redis).MaxKeyBytes);

    /// <inheritdoc/>
    /// <remarks>A PostgreSQL error is classified by PostgreSQL, any other by Redis.</remarks>
    public StoreFailure ClassifyFailure(Exception exception)
    {
        for (var current = exception; current is not null; current = current.InnerException)
        {
            if (current is Npgsql.NpgsqlException)
            {
                return Postgres.ClassifyFailure(exception);
            }
        }

        return RedisIdempotencyStore.ClassifyRedisFailure(exception);
    }

    /// <inheritdoc/>
    /// <remarks>PostgreSQL must be ready; Redis only filters duplicates early.</remarks>
    public ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default) => ((IIdempotencyStore)Postgres).CheckAsync(cancellationToken);

    /// <inheritdoc/>
    /// <remarks>Only PostgreSQL must answer: without Redis the store still works, more slowly.</remarks>
    public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => Postgres.PingAsync(cancellationToken);

    /// <inheritdoc/>
    /// <remarks>Forgets the key in PostgreSQL, the source of truth, first, and then in Redis.</remarks>
    public async ValueTask<bool> ForgetKeyAsync(string handlerName, string key, CancellationToken cancellationToken = default)
    {
        var forgotten = await Postgres.ForgetKeyAsync(handlerName, key, cancellationToken).ConfigureAwait(false);
        var forgottenInRedis = await Redis.ForgetKeyAsync(handlerName, key, cancellationToken).ConfigureAwait(false);
        return forgotten || forgottenInRedis;
    }
}
