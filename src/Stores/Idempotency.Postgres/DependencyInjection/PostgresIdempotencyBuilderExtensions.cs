using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.Postgres.Retention;
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

    /// <summary>Creates the store's schema when the host starts (instead of putting <see cref="PostgresIdempotencyStore.GetSchemaScript(PostgresIdempotencyStoreOptions?)"/> into your migrations).</summary>
    /// <param name="builder">The builder.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder ApplyPostgresSchemaOnStart(this IIdempotencyBuilder builder)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.TryAddSingleton<PostgresSchemaInitializer>();
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IStoreInitializer, PostgresSchemaInitializer>(sp => sp.GetRequiredService<PostgresSchemaInitializer>()));
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PostgresSchemaInitializer>(sp => sp.GetRequiredService<PostgresSchemaInitializer>()));
        return builder;
    }

    /// <summary>Prunes expired keys in bounded batches on an interval, as a hosted service.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="configure">Sets interval, batch size and pacing; validated at start-up.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder AddPostgresRetention(this IIdempotencyBuilder builder, Action<PostgresRetentionOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddOptions<PostgresRetentionOptions>()
            .Configure(o => configure?.Invoke(o))
            .Validate(o => o.GetValidationErrors().Count == 0, "Idempotency PostgreSQL retention: invalid options (Interval >= 1 s, BatchSize 1..100000, PauseBetweenBatches >= 0, MaxBatchesPerRun >= 1).")
            .ValidateOnStart();
        builder.Services.TryAddSingleton(sp => new PostgresRetentionPruner(
            sp.GetRequiredService<PostgresIdempotencyStore>(),
            sp.GetRequiredService<IOptions<PostgresRetentionOptions>>().Value,
            sp.GetService<TimeProvider>(),
            sp.GetService<Microsoft.Extensions.Logging.ILoggerFactory>()?.CreateLogger(typeof(PostgresRetentionPruner).FullName!)));
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PostgresRetentionService>());
        return builder;
    }

    /// <summary>Runs an outbox relay as a hosted service: it publishes what handlers added with <c>context.AddOutgoing(...)</c> after their commits.</summary>
    /// <param name="builder">The builder.</param>
    /// <param name="publisher">Creates the broker publisher (the Kafka, RabbitMQ and SQS packages provide one each).</param>
    /// <param name="configure">Sets batch size, polling, backoff and cleanup; validated at start-up.</param>
    /// <returns>The builder.</returns>
    public static IIdempotencyBuilder AddPostgresOutboxRelay(this IIdempotencyBuilder builder, Func<IServiceProvider, IOutboxPublisher> publisher, Action<PostgresOutboxRelayOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        ArgumentNullException.ThrowIfNull(publisher);
        builder.Services.AddOptions<PostgresOutboxRelayOptions>()
            .Configure(o => configure?.Invoke(o))
            .Validate(o => o.GetValidationErrors().Count == 0, "Idempotency outbox relay: invalid options (BatchSize 1..10000, PollInterval >= 10 ms, KeepSentFor >= 0, CleanupInterval >= 1 s, CleanupBatchSize >= 1).")
            .ValidateOnStart();
        builder.Services.TryAddSingleton(sp => new PostgresOutboxRelay(
            sp.GetRequiredService<PostgresIdempotencyStore>(),
            publisher(sp),
            sp.GetRequiredService<IOptions<PostgresOutboxRelayOptions>>().Value,
            sp.GetService<TimeProvider>(),
            sp.GetService<Microsoft.Extensions.Logging.ILoggerFactory>()?.CreateLogger(typeof(PostgresOutboxRelay).FullName!)));
        builder.Services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PostgresOutboxRelayService>());
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

    /// <summary>Creates the schema once, whether the start-up check or the host asks first.</summary>
    private sealed class PostgresSchemaInitializer(PostgresIdempotencyStore store) : IHostedService, IStoreInitializer
    {
        private readonly Lazy<Task> _once = new(() => store.EnsureSchemaAsync(CancellationToken.None));

        public Task InitializeAsync(CancellationToken cancellationToken = default) => _once.Value.WaitAsync(cancellationToken);

        public Task StartAsync(CancellationToken cancellationToken) => InitializeAsync(cancellationToken);

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
