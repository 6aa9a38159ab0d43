using Idempotency.Postgres;
using Idempotency.Storage;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Npgsql;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers the PostgreSQL store.</summary>
public static class PostgresIdempotencyBuilderExtensions
{
    /// <summary>Uses PostgreSQL as the store, with options validated at start-up.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="configure">Sets the connection string and table names.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UsePostgres(this IIdempotencyBuilder builder, Action<PostgresIdempotencyStoreOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(configure);
        builder.Services.AddOptions<PostgresIdempotencyStoreOptions>().Configure(configure).ValidateOnStart();
        return builder.AddPostgresStore(dataSource: null);
    }

    /// <summary>Uses PostgreSQL as the store, binding its options from configuration (e.g. <c>Idempotency:Postgres</c>).</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="section">The section holding <see cref="PostgresIdempotencyStoreOptions"/> properties.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UsePostgres(this IIdempotencyBuilder builder, IConfiguration section)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(section);
        builder.Services.AddOptions<PostgresIdempotencyStoreOptions>().Bind(section).ValidateOnStart();
        return builder.AddPostgresStore(dataSource: null);
    }

    /// <summary>Uses PostgreSQL as the store over a data source from the container (shared with your own code).</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="dataSource">Resolves the data source.</param>
    /// <param name="configure">Optionally sets table names.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder UsePostgres(this IIdempotencyBuilder builder, Func<IServiceProvider, NpgsqlDataSource> dataSource, Action<PostgresIdempotencyStoreOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(dataSource);
        builder.Services.AddOptions<PostgresIdempotencyStoreOptions>().Configure(o => configure?.Invoke(o)).ValidateOnStart();
        return builder.AddPostgresStore(dataSource);
    }

    /// <summary>Creates the store's schema when the host starts (instead of running <c>schema.sql</c> in your migrations).</summary>
    /// <param name="builder">The builder.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder ApplyPostgresSchemaOnStart(this IIdempotencyBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PostgresSchemaInitializer>());
        return builder;
    }

    private static IIdempotencyBuilder AddPostgresStore(this IIdempotencyBuilder builder, Func<IServiceProvider, NpgsqlDataSource>? dataSource)
    {
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<PostgresIdempotencyStoreOptions>>(new PostgresOptionsValidator(requireConnectionString: dataSource is null)));
        builder.Services.TryAddSingleton(sp =>
        {
            var options = sp.GetRequiredService<IOptions<PostgresIdempotencyStoreOptions>>().Value;
            return dataSource is null ? new PostgresIdempotencyStore(options) : new PostgresIdempotencyStore(dataSource(sp), options);
        });
        return builder.UseStore(sp => sp.GetRequiredService<PostgresIdempotencyStore>());
    }

    private sealed class PostgresOptionsValidator(bool requireConnectionString) : IValidateOptions<PostgresIdempotencyStoreOptions>
    {
        public ValidateOptionsResult Validate(string? name, PostgresIdempotencyStoreOptions options)
        {
            var errors = options.GetValidationErrors(requireConnectionString);
            return errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors.Select(e => $"Idempotency PostgreSQL store: {e}"));
        }
    }

    private sealed class PostgresSchemaInitializer(PostgresIdempotencyStore store) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken) => store.EnsureSchemaAsync(cancellationToken);

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
