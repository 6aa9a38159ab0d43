using Dapper;
using Idempotency.Postgres;
using Npgsql;
using Testcontainers.PostgreSql;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// A PostgreSQL database for a test class: <c>IDEMPOTENCY_POSTGRES</c>, else a Testcontainers PostgreSQL when Docker
/// answers, else a failure saying how to start the services. Each fixture gets its own schema, so suites never
/// see each other's rows.
/// </summary>
public sealed class PostgresFixture : IAsyncLifetime
{
    private PostgreSqlContainer? _container;

    /// <summary>Gets the connection string.</summary>
    public string ConnectionString { get; private set; } = string.Empty;

    /// <summary>Gets a data source over <see cref="ConnectionString"/>.</summary>
    public NpgsqlDataSource DataSource { get; private set; } = null!;

    /// <summary>Gets the schema this fixture owns.</summary>
    public string Schema { get; } = "t_" + Guid.NewGuid().ToString("N")[..12];

    /// <inheritdoc/>
    public async ValueTask InitializeAsync()
    {
        var connectionString = ServiceEnvironment.Get(ServiceEnvironment.PostgresVariable);
        if (connectionString is null)
        {
            if (!ServiceEnvironment.DockerAnswers())
            {
                throw ServiceEnvironment.Missing(ServiceEnvironment.PostgresVariable, "PostgreSQL");
            }

            _container = new PostgreSqlBuilder("postgres:15").Build();
            await _container.StartAsync();
            connectionString = _container.GetConnectionString();
        }

        var builder = new NpgsqlConnectionStringBuilder(connectionString) { MaxPoolSize = 64 };
        ConnectionString = builder.ConnectionString;
        DataSource = NpgsqlDataSource.Create(ConnectionString);
        await using var connection = await DataSource.OpenConnectionAsync();
        await connection.ExecuteAsync($"CREATE SCHEMA IF NOT EXISTS {Schema}");
    }

    /// <summary>Creates a store in this fixture's schema with a fresh table, its schema applied.</summary>
    public async Task<PostgresIdempotencyStore> CreateStoreAsync(string? table = null)
    {
        var store = new PostgresIdempotencyStore(DataSource, new PostgresIdempotencyStoreOptions
        {
            Schema = Schema,
            Table = table ?? "processed_" + Guid.NewGuid().ToString("N")[..8],
            OutboxTable = "outbox_" + Guid.NewGuid().ToString("N")[..8],
        });
        await store.EnsureSchemaAsync();
        return store;
    }

    /// <summary>Creates a business table <c>(id text primary key, amount bigint, applied int)</c> in this schema and returns its qualified name.</summary>
    public async Task<string> CreateBusinessTableAsync(string? name = null)
    {
        var table = $"{Schema}.{name ?? "business_" + Guid.NewGuid().ToString("N")[..8]}";
        await using var connection = await DataSource.OpenConnectionAsync();
        await connection.ExecuteAsync($"CREATE TABLE {table} (id text PRIMARY KEY, amount bigint NOT NULL DEFAULT 0, applied int NOT NULL DEFAULT 0)");
        return table;
    }

    /// <summary>
    /// A <see cref="TcpProxy"/> in front of this database and a data source that connects through it, with short
    /// timeouts so an outage (<c>Proxy.Stop()</c>) shows at once. The real server is never touched.
    /// </summary>
    public ProxiedDatabase ConnectThroughProxy()
    {
        var real = new NpgsqlConnectionStringBuilder(ConnectionString);
        var proxy = new TcpProxy(real.Host!, real.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(ConnectionString) { Host = "127.0.0.1", Port = proxy.Port, Timeout = 2, CommandTimeout = 5 };
        return new ProxiedDatabase(proxy, NpgsqlDataSource.Create(viaProxy.ConnectionString));
    }

    /// <summary>Runs a scalar query.</summary>
    public async Task<T> ScalarAsync<T>(string sql, object? parameters = null)
    {
        await using var connection = await DataSource.OpenConnectionAsync();
        return await connection.ExecuteScalarAsync<T>(sql, parameters) ?? throw new InvalidOperationException($"No value from: {sql}");
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (DataSource is not null)
        {
            try
            {
                await using var connection = await DataSource.OpenConnectionAsync();
                await connection.ExecuteAsync($"DROP SCHEMA IF EXISTS {Schema} CASCADE");
            }
            catch (NpgsqlException)
            {
                // The server may be down after a fault test; the schema is throwaway either way.
            }

            await DataSource.DisposeAsync();
        }

        if (_container is not null)
        {
            await _container.DisposeAsync();
        }
    }
}

/// <summary>A proxy in front of the test database and a data source through it; disposing ends both.</summary>
public sealed record ProxiedDatabase(TcpProxy Proxy, NpgsqlDataSource DataSource) : IAsyncDisposable
{
    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        await DataSource.DisposeAsync();
        await Proxy.DisposeAsync();
    }
}
