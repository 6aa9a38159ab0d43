using Idempotency.Postgres;
using Idempotency.Redis;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the Redis store and the layered Redis + PostgreSQL store.</summary>
public static class RedisIdempotencyBuilderExtensions
{
    /// <summary>Uses Redis as the store (Redis-held state or external-effects mode; see docs/redis.md), with options validated at start-up.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="connection">Resolves the multiplexer (register one <see cref="IConnectionMultiplexer"/> and share it).</param>
    /// <param name="configure">Sets prefix, retention, lease.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UseRedis(this IIdempotencyBuilder builder, Func<IServiceProvider, IConnectionMultiplexer> connection, Action<RedisIdempotencyStoreOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.AddRedisStore(connection, configure);
        return builder.UseStore(sp => sp.GetRequiredService<RedisIdempotencyStore>());
    }

    /// <summary>
    /// Uses Redis as the in-flight lease and fast duplicate filter in front of PostgreSQL, which stays the source of
    /// truth. Call <c>UsePostgres(...)</c> too (before or after); both stores' options are validated at start-up.
    /// </summary>
    /// <param name="builder">The builder.</param>
    /// <param name="connection">Resolves the multiplexer.</param>
    /// <param name="configure">Sets the Redis prefix, retention and lease.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UseLayeredRedisAndPostgres(this IIdempotencyBuilder builder, Func<IServiceProvider, IConnectionMultiplexer> connection, Action<RedisIdempotencyStoreOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.AddRedisStore(connection, configure);
        builder.Services.TryAddSingleton(sp => new LayeredIdempotencyStore(
            sp.GetRequiredService<RedisIdempotencyStore>(),
            sp.GetService<PostgresIdempotencyStore>() ?? throw new InvalidOperationException("The layered store needs the PostgreSQL store: call UsePostgres(...) on AddIdempotency() as well.")));
        return builder.UseStore(sp => sp.GetRequiredService<LayeredIdempotencyStore>());
    }

    private static void AddRedisStore(this IIdempotencyBuilder builder, Func<IServiceProvider, IConnectionMultiplexer> connection, Action<RedisIdempotencyStoreOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.AddOptions<RedisIdempotencyStoreOptions>().Configure(configure).ValidateOnStart();
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<RedisIdempotencyStoreOptions>, RedisOptionsValidator>());
        builder.Services.TryAddSingleton(sp => new RedisIdempotencyStore(
            connection(sp),
            sp.GetRequiredService<IOptions<RedisIdempotencyStoreOptions>>().Value,
            sp.GetService<ILoggerFactory>()?.CreateLogger(typeof(RedisIdempotencyStore).FullName!)));
    }

    private sealed class RedisOptionsValidator : IValidateOptions<RedisIdempotencyStoreOptions>
    {
        public ValidateOptionsResult Validate(string? name, RedisIdempotencyStoreOptions options)
        {
            var errors = options.GetValidationErrors();
            return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors.Select(e => $"Idempotency Redis store: {e}"));
        }
    }
}
