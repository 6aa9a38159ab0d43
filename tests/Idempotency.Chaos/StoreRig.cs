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
        "postgres-crash" => new PostgresRig(crash: true),
        "redis" => new RedisRig(),
        "layered" => new LayeredRig(),
        "redis-lease" => new RedisRig(lease: true),
        "redis-crash" => new RedisRig(crash: true),
        "redis-crash-everysec" => new RedisRig(crash: true, fsync: "everysec"),
        _ => throw new ArgumentException(name),
    };

    public static async Task<ChildStore> CreateChildStoreAsync(ChildArgs args) => args.StoreKind switch
    {
        "postgres" or "postgres-crash" => PostgresRig.CreateChild(args),
        "redis" => await RedisRig.CreateChildAsync(args).ConfigureAwait(false),
        "layered" => await LayeredRig.CreateChildAsync(args).ConfigureAwait(false),
        "redis-lease" => await RedisRig.CreateLeaseChildAsync(args).ConfigureAwait(false),
        "redis-crash" => await RedisRig.CreateChildAsync(args).ConfigureAwait(false),
        "redis-crash-everysec" => await RedisRig.CreateChildAsync(args, reportEffects: true).ConfigureAwait(false),
        _ => throw new ArgumentException(args.StoreKind),
    };

    public virtual async Task SetupAsync(string runId)
    {
        var (host, port) = Target();
        _proxy = new TcpProxy(host, port);
        await SetupCoreAsync(runId).ConfigureAwait(false);
    }

    /// <summary>Cuts every connection of the child to the store and refuses new ones (what a server restart looks like).</summary>
    public virtual void Cut()
    {
        Proxy.Stop();
        Cuts++;
    }

    public virtual void Restore() => Proxy.Start();

    public abstract void AddChildArgs(IDictionary<string, string> args);

    /// <summary>Gets the store's own faults beyond the proxy cut (e.g. a real server crash).</summary>
    public virtual IReadOnlyList<FaultKind> Faults => [];

    /// <summary>Reads every business effect: key -> how many times it was applied.</summary>
    public abstract Task<Dictionary<string, long>> ReadEffectsAsync();

    /// <summary>
    /// Gets the window before a server crash in which acknowledged writes may be lost by design (Redis with
    /// <c>appendfsync everysec</c>), or null when every acknowledged write must survive.
    /// </summary>
    public virtual LossWindow? CrashLossWindow => null;

    /// <summary>Reads the order in which keys got their first effect (key -> sequence), or null when the store keeps none.</summary>
    public virtual Task<Dictionary<string, long>?> ReadFirstEffectOrderAsync() => Task.FromResult<Dictionary<string, long>?>(null);

    public virtual async ValueTask DisposeAsync()
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

/// <summary>
/// PostgreSQL: an own schema with the store's tables and a business table <c>effects(key, applied)</c>. With
/// <c>crash</c> (store <c>postgres-crash</c>): on a <see cref="PrivatePostgres"/> cluster of the suite's own, which the
/// <c>postgres-crash</c> fault SIGKILLs (postmaster and backends) and restarts with pg_ctl: counts stay exact.
/// </summary>
internal sealed class PostgresRig(bool crash = false) : StoreRig
{
    private NpgsqlConnectionStringBuilder _direct = crash ? new() : new(Env("IDEMPOTENCY_POSTGRES"));
    private PrivatePostgres? _server;
    private string _schema = "";

    public override string Name => crash ? "postgres-crash" : "postgres";

    public override IReadOnlyList<FaultKind> Faults => _server is null
        ? []
        : [new("postgres-crash", (rng, ct) => _server.CrashAsync(TimeSpan.FromMilliseconds(rng.Next(200, 1500)), ct))];

    public override async Task SetupAsync(string runId)
    {
        if (crash)
        {
            _server = await PrivatePostgres.StartAsync(runId);
            _direct = new NpgsqlConnectionStringBuilder(_server.ConnectionString);
        }

        await base.SetupAsync(runId);
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }

    public string Schema => _schema;

    public string DirectConnectionString => _direct.ConnectionString;

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
            Pooling = true,
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

    public override async Task<Dictionary<string, long>?> ReadFirstEffectOrderAsync()
    {
        // first_seq is drawn when a key's row is inserted, i.e. by its first effect; a FIFO group's messages run one
        // after another, so within a group it is the order of the first effects.
        await using var connection = new NpgsqlConnection(_direct.ConnectionString);
        var rows = await connection.QueryAsync<(string Key, long Seq)>($"SELECT key, first_seq FROM {_schema}.effects");
        return rows.ToDictionary(r => r.Key, r => r.Seq, StringComparer.Ordinal);
    }

    protected override (string Host, int Port) Target() => (_direct.Host ?? "127.0.0.1", _direct.Port);

    protected override async Task SetupCoreAsync(string runId)
    {
        _schema = "chaos_" + runId;
        await using var dataSource = NpgsqlDataSource.Create(_direct.ConnectionString);
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            await connection.ExecuteAsync($"CREATE SCHEMA {_schema}; CREATE TABLE {_schema}.effects (key text PRIMARY KEY, applied int NOT NULL, first_seq bigserial NOT NULL)");
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
/// written in the same MULTI/EXEC through <c>context.GetRedisTransaction()</c>. With <c>lease</c> (store
/// <c>redis-lease</c>): the lease mode for external effects, where the effect is a plain <c>HINCRBY</c> outside the
/// store's transaction, so it is at-least-once by design; the child journals each attempt (see <see cref="LeaseJournal"/>).
/// </summary>
/// <remarks>
/// With <c>crash</c> (store <c>redis-crash</c>): Redis-held state on a <see cref="PrivateRedis"/> server of the suite's
/// own, which the <c>redis-crash</c> fault SIGKILLs and restarts (AOF, <c>appendfsync always</c>): counts stay exact.
/// </remarks>
internal sealed class RedisRig(bool lease = false, bool crash = false, string fsync = "always") : StoreRig
{
    /// <summary>How long a lease-mode handler stalls after its effect when told to: past the 2 s lease.</summary>
    public static readonly TimeSpan LeaseStall = TimeSpan.FromMilliseconds(3500);

    private ConfigurationOptions _direct = crash ? new ConfigurationOptions() : ConfigurationOptions.Parse(Env("IDEMPOTENCY_REDIS"));
    private ConnectionMultiplexer? _connection;
    private PrivateRedis? _server;
    private string _prefix = "";

    public override string Name => lease ? "redis-lease" : crash ? (fsync == "always" ? "redis-crash" : "redis-crash-" + fsync) : "redis";

    public override IReadOnlyList<FaultKind> Faults => _server is null
        ? []
        : [new("redis-crash", (rng, ct) => _server.CrashAsync(TimeSpan.FromMilliseconds(rng.Next(200, 1500)), ct))];

    /// <summary>
    /// Gets the loss window of <c>appendfsync everysec</c>: Redis documents that about the last second of writes may be
    /// lost, and up to 2 s when a background fsync is slow (the AOF write is postponed while replies still go out);
    /// a second more covers how late the child's report of a commit reaches the orchestrator on a busy machine.
    /// </summary>
    public override LossWindow? CrashLossWindow => _server is not null && fsync != "always"
        ? new LossWindow(TimeSpan.FromSeconds(3), TimeSpan.FromSeconds(1), [.. _server.CrashTimes])
        : null;

    public override async Task SetupAsync(string runId)
    {
        if (crash)
        {
            _server = await PrivateRedis.StartAsync(runId, fsync);
            _direct = ConfigurationOptions.Parse($"127.0.0.1:{_server.Port}");
            _direct.AbortOnConnectFail = false;
        }

        await base.SetupAsync(runId);
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        if (_server is not null)
        {
            await _server.DisposeAsync();
        }
    }

    public bool IsLease => lease;

    /// <summary>
    /// Lease mode, child side. Before its effect the handler writes <c>E key</c> on stdout; the store reports <c>K key</c>
    /// after each commit that recorded the key; a handler told to (<c>stall-lease N</c>) writes <c>S key</c> after its
    /// effect and then stalls past its lease, so the key can be taken over while it still runs.
    /// </summary>
    public static async Task<ChildStore> CreateLeaseChildAsync(ChildArgs args)
    {
        var config = ConfigurationOptions.Parse(args["redis"]);
        config.AbortOnConnectFail = false;
        config.ConnectTimeout = 2000;
        config.SyncTimeout = config.AsyncTimeout = 3000;
        config.ConnectRetry = 1;
        var connection = await ConnectionMultiplexer.ConnectAsync(config).ConfigureAwait(false);
        var prefix = args["prefix"];
        var effects = (RedisKey)(prefix + ":effects");
        var inner = new RedisIdempotencyStore(connection, new RedisIdempotencyStoreOptions { KeyPrefix = prefix, LeaseDuration = TimeSpan.FromSeconds(2) });
        var db = connection.GetDatabase();
        return new ChildStore(
            new ReportingStore(inner),
            async (context, ct) =>
            {
                ChildHost.Output.WriteLine("E " + context.Key);
                await db.HashIncrementAsync(effects, context.Key, 1).ConfigureAwait(false);
                if (ChildHost.TakeLeaseStall())
                {
                    ChildHost.Output.WriteLine("S " + context.Key);
                    await Task.Delay(LeaseStall, ct).ConfigureAwait(false);
                }
            },
            async () => await connection.DisposeAsync().ConfigureAwait(false));
    }

    /// <summary>
    /// Redis-held state, child side; with <paramref name="reportEffects"/> the handler writes <c>E key</c> when it
    /// applies its effect (just before the commit), so a key lost in an <c>everysec</c> crash window can be matched to
    /// when its write reached Redis.
    /// </summary>
    public static async Task<ChildStore> CreateChildAsync(ChildArgs args, bool reportEffects = false)
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
                if (reportEffects)
                {
                    ChildHost.Output.WriteLine("E " + context.Key);
                }

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

/// <summary>
/// The layered store: Redis (leases and completed markers) in front of PostgreSQL (the guarantee: the business row
/// <c>effects(key, applied)</c> commits with the key). A cut hits Redis alone, PostgreSQL alone or both, in turn:
/// with Redis gone the store carries on with PostgreSQL alone; with PostgreSQL gone it is an outage.
/// </summary>
internal sealed class LayeredRig : StoreRig
{
    private readonly PostgresRig _postgres = new();
    private readonly RedisRig _redis = new();
    private int _cuts;
    private int _lastCut;

    public override string Name => "layered";

    public static async Task<ChildStore> CreateChildAsync(ChildArgs args)
    {
        var dataSource = NpgsqlDataSource.Create(args["pg"]);
        var schema = args["schema"];
        var postgres = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema });
        var config = ConfigurationOptions.Parse(args["redis"]);
        config.AbortOnConnectFail = false;
        config.ConnectTimeout = 2000;
        config.SyncTimeout = config.AsyncTimeout = 3000;
        config.ConnectRetry = 1;
        var connection = await ConnectionMultiplexer.ConnectAsync(config).ConfigureAwait(false);
        var store = new LayeredIdempotencyStore(connection, new RedisIdempotencyStoreOptions { KeyPrefix = args["prefix"], LeaseDuration = TimeSpan.FromSeconds(2) }, postgres);
        var sql = $"INSERT INTO {schema}.effects (key, applied) VALUES (@key, 1) ON CONFLICT (key) DO UPDATE SET applied = {schema}.effects.applied + 1";
        return new ChildStore(
            store,
            async (context, ct) => await context.GetNpgsqlConnection().ExecuteAsync(new CommandDefinition(sql, new { key = context.Key }, context.GetNpgsqlTransaction(), cancellationToken: ct)).ConfigureAwait(false),
            async () =>
            {
                await connection.DisposeAsync().ConfigureAwait(false);
                await dataSource.DisposeAsync().ConfigureAwait(false);
            });
    }

    public override async Task SetupAsync(string runId)
    {
        await _postgres.SetupAsync(runId).ConfigureAwait(false);
        await _redis.SetupAsync(runId).ConfigureAwait(false);
    }

    public override void Cut()
    {
        // Redis alone, PostgreSQL alone, both: in turn.
        _lastCut = _cuts++ % 3;
        if (_lastCut != 1)
        {
            _redis.Cut();
        }

        if (_lastCut != 0)
        {
            _postgres.Cut();
        }
    }

    public override void Restore()
    {
        _redis.Restore();
        _postgres.Restore();
    }

    public override void AddChildArgs(IDictionary<string, string> args)
    {
        _postgres.AddChildArgs(args);
        _redis.AddChildArgs(args);
    }

    public override Task<Dictionary<string, long>> ReadEffectsAsync() => _postgres.ReadEffectsAsync();

    public override Task<Dictionary<string, long>?> ReadFirstEffectOrderAsync() => _postgres.ReadFirstEffectOrderAsync();

    public override async ValueTask DisposeAsync()
    {
        await _redis.DisposeAsync().ConfigureAwait(false);
        await _postgres.DisposeAsync().ConfigureAwait(false);
    }

    protected override (string Host, int Port) Target() => throw new NotSupportedException("the layered rig has a proxy per server");

    protected override Task SetupCoreAsync(string runId) => Task.CompletedTask;

    protected override Task CleanupAsync() => Task.CompletedTask;
}

/// <summary>A store that writes <c>K key</c> on stdout for every key a commit recorded (lease-mode journal).</summary>
internal sealed class ReportingStore(IIdempotencyStore inner) : IIdempotencyStore
{
    public string Name => inner.Name;

    public async ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default) =>
        new Transaction(await inner.BeginAsync(cancellationToken).ConfigureAwait(false));

    public bool IsUnavailable(Exception exception) => inner.IsUnavailable(exception);

    public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => inner.PingAsync(cancellationToken);

    private sealed class Transaction(IIdempotencyTransaction inner) : IIdempotencyTransaction
    {
        public ValueTask<ClaimResult> ClaimAsync(ClaimRequest request, CancellationToken cancellationToken = default) => inner.ClaimAsync(request, cancellationToken);

        public ValueTask<IReadOnlyList<ClaimResult>> ClaimBatchAsync(IReadOnlyList<ClaimRequest> requests, CancellationToken cancellationToken = default) => inner.ClaimBatchAsync(requests, cancellationToken);

        public async ValueTask CommitAsync(IReadOnlyList<CompletionRecord> completions, IReadOnlyList<Idempotency.Outbox.OutboxMessage> outbox, CancellationToken cancellationToken = default)
        {
            await inner.CommitAsync(completions, outbox, cancellationToken).ConfigureAwait(false);
            foreach (var c in completions)
            {
                ChildHost.Output.WriteLine("K " + c.Claim.Key);
            }
        }

        public ValueTask RollbackAsync(CancellationToken cancellationToken = default) => inner.RollbackAsync(cancellationToken);

        public ValueTask DisposeAsync() => inner.DisposeAsync();
    }
}
