using Idempotency.Redis;
using Idempotency.Storage;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using StackExchange.Redis;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the Redis store and the layered store (Redis in front of a source of truth).</summary>
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
    /// Uses Redis as the in-flight lease and fast duplicate filter in front of another store, which stays the source of
    /// truth. Register that store first and pass it here, e.g. after <c>UsePostgres(...)</c>:
    /// <c>.UseLayeredRedis(sp => mux, o => o.KeyPrefix = "orders", sp => sp.GetRequiredService&lt;PostgresIdempotencyStore&gt;())</c>.
    /// The last <c>Use...</c> call chooses the store, so call this one after the source's. Both stores' options are
    /// validated at start-up.
    /// </summary>
    /// <param name="builder">The builder.</param>
    /// <param name="connection">Resolves the multiplexer.</param>
    /// <param name="configure">Sets the Redis prefix, retention and lease.</param>
    /// <param name="source">Resolves the source of truth (by its concrete type, not <see cref="IIdempotencyStore"/>, which becomes the layered store).</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UseLayeredRedis(this IIdempotencyBuilder builder, Func<IServiceProvider, IConnectionMultiplexer> connection, Action<RedisIdempotencyStoreOptions> configure, Func<IServiceProvider, IIdempotencyStore> source)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(source);
        builder.AddRedisStore(connection, configure);
        builder.Services.TryAddSingleton(sp => new LayeredIdempotencyStore(sp.GetRequiredService<RedisIdempotencyStore>(), source(sp)));
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
