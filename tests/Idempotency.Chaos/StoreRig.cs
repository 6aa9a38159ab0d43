using Dapper;
using Idempotency.Postgres;
using Idempotency.Redis;
using Idempotency.Storage;
using Idempotency.TestSupport;
using Npgsql;
using StackExchange.Redis;

namespace Idempotency.Chaos;

/// <summary>
/// One store of a scenario, orchestrator side: creates its own schema or key prefix, puts a <see cref="TcpProxy"/> in
/// front of the shared server (the child connects through it, so cutting the proxy looks like a server restart to the
/// child while the shared server and everyone else's tests are untouched), and reads the business effects back.
/// </summary>
internal abstract class StoreRig : IAsyncDisposable
{
    private TcpProxy? _proxy;

    public abstract string Name { get; }

    public int Cuts { get; private set; }

    protected TcpProxy Proxy => _proxy ?? throw new InvalidOperationException("not set up");

    public static StoreRig Create(string name) => name switch
    {
        "postgres" => new PostgresRig(),
        "redis" => new RedisRig(),
        _ => throw new ArgumentException(name),
    };

    public static async Task<ChildStore> CreateChildStoreAsync(ChildArgs args) => args.StoreKind switch
    {
        "postgres" => PostgresRig.CreateChild(args),
        "redis" => await RedisRig.CreateChildAsync(args).ConfigureAwait(false),
        _ => throw new ArgumentException(args.StoreKind),
    };

    public async Task SetupAsync(string runId)
    {
        var (host, port) = Target();
        _proxy = new TcpProxy(host, port);
        await SetupCoreAsync(runId).ConfigureAwait(false);
    }

    /// <summary>Cuts every connection of the child to the store and refuses new ones (what a server restart looks like).</summary>
    public void Cut()
    {
        Proxy.Stop();
        Cuts++;
    }

    public void Restore() => Proxy.Start();

    public abstract void AddChildArgs(IDictionary<string, string> args);

    /// <summary>Reads every business effect: key -> how many times it was applied.</summary>
    public abstract Task<Dictionary<string, long>> ReadEffectsAsync();

    public async ValueTask DisposeAsync()
    {
        if (_proxy is not null)
        {
            await _proxy.DisposeAsync().ConfigureAwait(false);
        }

        try
        {
            await CleanupAsync().ConfigureAwait(false);
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"chaos: cleanup of {Name} failed: {e.Message}");
        }
    }

    protected abstract (string Host, int Port) Target();

    protected abstract Task SetupCoreAsync(string runId);

    protected abstract Task CleanupAsync();

    protected static string Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } v
        ? v
        : throw new InvalidOperationException($"${name} is not set: run ./build.sh chaos (it starts the services and exports it), or scripts/services.sh up and export the variables of `scripts/services.sh env`.");
}

/// <summary>The store and the business effect inside its transaction, child side.</summary>
internal sealed class ChildStore(IIdempotencyStore store, Func<MessageContext, CancellationToken, ValueTask> effect, Func<ValueTask> dispose) : IAsyncDisposable
{
    public IIdempotencyStore Store { get; } = store;

    public ValueTask ApplyEffectAsync(MessageContext context, CancellationToken cancellationToken) => effect(context, cancellationToken);

    public ValueTask DisposeAsync() => dispose();
}

/// <summary>PostgreSQL: an own schema with the store's tables and a business table <c>effects(key, applied)</c>.</summary>
internal sealed class PostgresRig : StoreRig
{
    private readonly NpgsqlConnectionStringBuilder _direct = new(Env("IDEMPOTENCY_POSTGRES"));
    private string _schema = "";

    public override string Name => "postgres";

    public static ChildStore CreateChild(ChildArgs args)
    {
        var dataSource = NpgsqlDataSource.Create(args["pg"]);
        var schema = args["schema"];
        var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema });
        var sql = $"INSERT INTO {schema}.effects (key, applied) VALUES (@key, 1) ON CONFLICT (key) DO UPDATE SET applied = {schema}.effects.applied + 1";
        return new ChildStore(
            store,
            async (context, ct) => await context.GetNpgsqlConnection().ExecuteAsync(new CommandDefinition(sql, new { key = context.Key }, context.GetNpgsqlTransaction(), cancellationToken: ct)).ConfigureAwait(false),
            async () => await dataSource.DisposeAsync().ConfigureAwait(false));
    }

    public override void AddChildArgs(IDictionary<string, string> args)
    {
        // Short timeouts so a cut is noticed at once; the pool must not hand out connections the cut killed.
        var viaProxy = new NpgsqlConnectionStringBuilder(_direct.ConnectionString)
        {
            Host = "127.0.0.1",
            Port = Proxy.Port,
            Timeout = 3,
            CommandTimeout = 10,
            MaxPoolSize = 8,
        };
        args["pg"] = viaProxy.ConnectionString;
        args["schema"] = _schema;
    }

    public override async Task<Dictionary<string, long>> ReadEffectsAsync()
    {
        await using var connection = new NpgsqlConnection(_direct.ConnectionString);
        var rows = await connection.QueryAsync<(string Key, long Applied)>($"SELECT key, applied::bigint FROM {_schema}.effects");
        return rows.ToDictionary(r => r.Key, r => r.Applied, StringComparer.Ordinal);
    }

    protected override (string Host, int Port) Target() => (_direct.Host ?? "127.0.0.1", _direct.Port);

    protected override async Task SetupCoreAsync(string runId)
    {
        _schema = "chaos_" + runId;
        await using var dataSource = NpgsqlDataSource.Create(_direct.ConnectionString);
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync($"CREATE SCHEMA {_schema}; CREATE TABLE {_schema}.effects (key text PRIMARY KEY, applied int NOT NULL)");
        }

        await new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = _schema }).EnsureSchemaAsync();
    }

    protected override async Task CleanupAsync()
    {
        if (_schema.Length == 0)
        {
            return;
        }

        await using var connection = new NpgsqlConnection(_direct.ConnectionString);
        await connection.ExecuteAsync($"DROP SCHEMA IF EXISTS {_schema} CASCADE");
    }
}

/// <summary>
/// Redis in Redis-held-state mode: the store's records and the business effect (a hash field incremented per key) are
/// written in the same MULTI/EXEC through <c>context.GetRedisTransaction()</c>.
/// </summary>
internal sealed class RedisRig : StoreRig
{
    private readonly ConfigurationOptions _direct = ConfigurationOptions.Parse(Env("IDEMPOTENCY_REDIS"));
    private ConnectionMultiplexer? _connection;
    private string _prefix = "";

    public override string Name => "redis";

    public static async Task<ChildStore> CreateChildAsync(ChildArgs args)
    {
        var config = ConfigurationOptions.Parse(args["redis"]);
        config.AbortOnConnectFail = false;
        config.ConnectTimeout = 2000;
        config.SyncTimeout = config.AsyncTimeout = 3000;
        config.ConnectRetry = 1;
        var connection = await ConnectionMultiplexer.ConnectAsync(config).ConfigureAwait(false);
        var prefix = args["prefix"];
        var effects = (RedisKey)(prefix + ":effects");
        // A killed child leaves its keys leased: a short lease lets the restarted child take them over quickly.
        var store = new RedisIdempotencyStore(connection, new RedisIdempotencyStoreOptions { KeyPrefix = prefix, LeaseDuration = TimeSpan.FromSeconds(2) });
        return new ChildStore(
            store,
            (context, ct) =>
            {
                _ = context.GetRedisTransaction().HashIncrementAsync(effects, context.Key, 1);
                return ValueTask.CompletedTask;
            },
            async () => await connection.DisposeAsync().ConfigureAwait(false));
    }

    public override void AddChildArgs(IDictionary<string, string> args)
    {
        var viaProxy = _direct.Clone();
        viaProxy.EndPoints.Clear();
        viaProxy.EndPoints.Add("127.0.0.1", Proxy.Port);
        args["redis"] = viaProxy.ToString();
        args["prefix"] = _prefix;
    }

    public override async Task<Dictionary<string, long>> ReadEffectsAsync()
    {
        var entries = await Db.HashGetAllAsync(_prefix + ":effects");
        return entries.ToDictionary(e => e.Name.ToString(), e => (long)e.Value, StringComparer.Ordinal);
    }

    private IDatabase Db => (_connection ?? throw new InvalidOperationException("not set up")).GetDatabase();

    protected override (string Host, int Port) Target()
    {
        var endpoint = _direct.EndPoints.Single();
        return endpoint switch
        {
            System.Net.DnsEndPoint d => (d.Host, d.Port == 0 ? 6379 : d.Port),
            System.Net.IPEndPoint i => (i.Address.ToString(), i.Port),
            _ => throw new InvalidOperationException($"unsupported endpoint {endpoint}"),
        };
    }

    protected override async Task SetupCoreAsync(string runId)
    {
        _prefix = "chaos:" + runId;
        _connection = await ConnectionMultiplexer.ConnectAsync(_direct.Clone());
    }

    protected override async Task CleanupAsync()
    {
        if (_connection is null)
        {
            return;
        }

        var server = _connection.GetServers().First();
        var keys = new List<RedisKey>();
        await foreach (var key in server.KeysAsync(pattern: _prefix + ":*", pageSize: 1000))
        {
            keys.Add(key);
        }

        foreach (var chunk in keys.Chunk(500))
        {
            await Db.KeyDeleteAsync(chunk);
        }

        await _connection.DisposeAsync();
    }
}
