using Idempotency.Storage;
using Microsoft.Extensions.Logging;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// Redis in front of another store, the source of truth (PostgreSQL, say): Redis holds the in-flight lease and a
/// completed marker that filters duplicates without touching the source of truth, whose claim in the handler's
/// transaction stays the guarantee.
/// </summary>
/// <remarks>
/// <para>Claim: a completed marker in Redis answers Duplicate (with the stored fingerprint, which the processor checks);
/// a lease held by another worker answers in progress; otherwise this worker takes the lease and claims the key in the
/// source of truth, in the transaction the handler writes in (with PostgreSQL, <c>context.GetNpgsqlTransaction()</c>,
/// which reaches it through <see cref="ILayeredTransaction"/>).</para>
/// <para>Commit: the lease must not be held by another token (else <see cref="ClaimLostException"/> and the source's
/// transaction rolls back); then the source's commit, which is the guarantee; then, best effort, the completed marker
/// in Redis.</para>
/// <para>If Redis is unreachable the store carries on with the source of truth alone: only the filter and the early
/// stop of a second worker are lost, never the guarantee.</para>
/// </remarks>
public sealed class LayeredIdempotencyStore : IIdempotencyStore, IIdempotencyKeyAdmin
{
    /// <summary>Creates the layered store.</summary>
    /// <param name="redis">The Redis connection.</param>
    /// <param name="redisOptions">The Redis layer's options (prefix, retention of the markers, lease); validated here.</param>
    /// <param name="source">The source of truth, such as the PostgreSQL store.</param>
    /// <param name="logger">Optional logger.</param>
    /// <exception cref="ArgumentException">A Redis option is invalid; the message names it.</exception>
    public LayeredIdempotencyStore(IConnectionMultiplexer redis, RedisIdempotencyStoreOptions redisOptions, IIdempotencyStore source, ILogger? logger = null)
        : this(new RedisIdempotencyStore(redis, redisOptions, logger), source)
    {
    }

    /// <summary>Creates the layered store over an existing Redis store.</summary>
    /// <param name="redis">The Redis store used as lease and filter.</param>
    /// <param name="source">The source of truth, such as the PostgreSQL store.</param>
    public LayeredIdempotencyStore(RedisIdempotencyStore redis, IIdempotencyStore source)
    {
        ArgumentNullException.ThrowIfNull(redis);
        ArgumentNullException.ThrowIfNull(source);
        Redis = redis;
        Source = source;
    }

    /// <inheritdoc/>
    /// <value><c>redis+</c> and the source's name, such as <c>redis+postgres</c>.</value>
    public string Name => "redis+" + Source.Name;

    /// <summary>Gets the Redis layer.</summary>
    public RedisIdempotencyStore Redis { get; }

    /// <summary>Gets the source of truth.</summary>
    public IIdempotencyStore Source { get; }

    /// <inheritdoc/>
    public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
    {
        cancellationToken.ThrowIfCancellationRequested();

        // The source is opened only once a key gets past the Redis filter, so duplicates cost it nothing.
        return ValueTask.FromResult<IIdempotencyTransaction>(new LayeredIdempotencyTransaction(this));
    }

    /// <inheritdoc/>
    public bool IsUnavailable(Exception exception) => Source.IsUnavailable(exception) || RedisFailures.IsUnavailable(exception);

    /// <inheritdoc/>
    /// <value>The source of truth's: Redis only filters duplicates early, the source decides what is processed.</value>
    public TimeSpan? EnforcedRetention => Source.EnforcedRetention;

    /// <inheritdoc/>
    public int MaxKeyBytes => Math.Min(Source.MaxKeyBytes, ((IIdempotencyStore)Redis).MaxKeyBytes);

    /// <inheritdoc/>
    /// <remarks>A misconfiguration Redis recognises as its own (credentials, ACL, scripting) is Redis's; the source of truth classifies everything else.</remarks>
    public StoreFailure ClassifyFailure(Exception exception)
    {
        var redis = RedisFailures.Classify(exception);
        return redis.Kind == StoreFailureKind.Misconfiguration ? redis : Source.ClassifyFailure(exception);
    }

    /// <inheritdoc/>
    /// <remarks>The source of truth must be ready; Redis only filters duplicates early.</remarks>
    public ValueTask<StoreFailure?> CheckAsync(CancellationToken cancellationToken = default) => Source.CheckAsync(cancellationToken);

    /// <inheritdoc/>
    /// <remarks>Only the source of truth must answer: without Redis the store still works, more slowly.</remarks>
    public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => Source.PingAsync(cancellationToken);

    /// <inheritdoc/>
    /// <remarks>Forgets the key in the source of truth first, and then in Redis.</remarks>
    /// <exception cref="NotSupportedException">The source of truth cannot forget keys (it does not implement <see cref="IIdempotencyKeyAdmin"/>).</exception>
    public async ValueTask<bool> ForgetKeyAsync(string handlerName, string key, CancellationToken cancellationToken = default)
    {
        var source = Source as IIdempotencyKeyAdmin
            ?? throw new NotSupportedException($"The layered store's source of truth, the '{Source.Name}' store, cannot forget keys (it does not implement {nameof(IIdempotencyKeyAdmin)}).");
        var forgotten = await source.ForgetKeyAsync(handlerName, key, cancellationToken).ConfigureAwait(false);
        var forgottenInRedis = await Redis.ForgetKeyAsync(handlerName, key, cancellationToken).ConfigureAwait(false);
        return forgotten || forgottenInRedis;
    }
}
