using Dapper;
using Idempotency.Postgres;
using Idempotency.Redis;
using Idempotency.Storage;
using StackExchange.Redis;

namespace Idempotency.TestSupport;

/// <summary>The stores the adapter suites run their main scenarios against (a theory parameter).</summary>
public enum StoreKind
{
    /// <summary>PostgreSQL: the handler writes a business row in the store's transaction.</summary>
    Postgres,

    /// <summary>Redis-held state: the handler counts the key in a hash, in the store's MULTI/EXEC.</summary>
    Redis,
}

/// <summary>How many keys have an effect, the sum of all effects and the largest count of one key.</summary>
public readonly record struct EffectCounts(long Keys, long Total, long Max);

/// <summary>
/// A store of one <see cref="StoreKind"/> and a business effect committed in its transaction, so one test body runs
/// against both stores: <see cref="Handler"/> applies one effect per message, <see cref="ReadAsync"/> reads them back
/// (one per key means exactly-once). Created with <c>throughProxy</c>, the store connects through a
/// <see cref="TcpProxy"/> that <see cref="Cut"/> and <see cref="Restore"/> stop and start (an outage without touching
/// the shared server); reads always go direct.
/// </summary>
public abstract class EffectStore : IAsyncDisposable
{
    private int _runs;

    private protected EffectStore(TcpProxy? proxy) => Proxy = proxy;

    /// <summary>Gets the kind.</summary>
    public abstract StoreKind Kind { get; }

    /// <summary>Gets the store (through the proxy when there is one).</summary>
    public abstract IIdempotencyStore Store { get; }

    /// <summary>Gets how many times a handler body applied its effect (commit pending or not).</summary>
    public int Runs => Volatile.Read(ref _runs);

    /// <summary>Gets the proxy in front of the store, when created with one.</summary>
    protected TcpProxy? Proxy { get; }

    /// <summary>Creates a store of the kind with its own schema/table or key prefix.</summary>
    public static async Task<EffectStore> CreateAsync(StoreKind kind, PostgresFixture db, RedisFixture redis, bool throughProxy = false) => kind switch
    {
        StoreKind.Postgres => await PostgresEffectStore.CreateAsync(db, throughProxy),
        StoreKind.Redis => await RedisEffectStore.CreateAsync(redis, throughProxy),
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>A handler that applies one effect per message in the store's transaction.</summary>
    /// <param name="fail">Throws <c>"poison message {key}"</c> for the messages it selects.</param>
    /// <param name="onRun">Runs first, on every attempt.</param>
    public IIdempotentMessageHandler Handler(Func<MessageContext, bool>? fail = null, Action<MessageContext>? onRun = null) =>
        IdempotentHandler.Create(async (context, cancellationToken) =>
        {
            onRun?.Invoke(context);
            if (fail?.Invoke(context) == true)
            {
                throw new InvalidOperationException("poison message " + context.Key);
            }

            await ApplyAsync(context, cancellationToken);
            Interlocked.Increment(ref _runs);
        });

    /// <summary>Reads the effects back, directly from the server.</summary>
    public abstract Task<EffectCounts> ReadAsync();

    /// <summary>Cuts the store's connections and refuses new ones (needs <c>throughProxy</c>).</summary>
    public virtual void Cut() => (Proxy ?? throw new InvalidOperationException("created without throughProxy")).Stop();

    /// <summary>Lets connections through again.</summary>
    public void Restore() => (Proxy ?? throw new InvalidOperationException("created without throughProxy")).Start();

    /// <inheritdoc/>
    public virtual async ValueTask DisposeAsync()
    {
        if (Proxy is not null)
        {
            await Proxy.DisposeAsync();
        }

        GC.SuppressFinalize(this);
    }

    /// <inheritdoc/>
    public override string ToString() => Kind.ToString();

    /// <summary>Applies the message's effect in the store's transaction.</summary>
    protected abstract ValueTask ApplyAsync(MessageContext context, CancellationToken cancellationToken);

    private sealed class PostgresEffectStore(PostgresFixture db, IIdempotencyStore store, string table, ProxiedDatabase? proxied) : EffectStore(proxied?.Proxy)
    {
        public override StoreKind Kind => StoreKind.Postgres;

        public override IIdempotencyStore Store => store;

        public static async Task<EffectStore> CreateAsync(PostgresFixture db, bool throughProxy)
        {
            var direct = await db.CreateStoreAsync();
            var table = await db.CreateBusinessTableAsync();
            if (!throughProxy)
            {
                return new PostgresEffectStore(db, direct, table, null);
            }

            var proxied = db.ConnectThroughProxy();
            return new PostgresEffectStore(db, new PostgresIdempotencyStore(proxied.DataSource, direct.Options), table, proxied);
        }

        public override async Task<EffectCounts> ReadAsync()
        {
            await using var connection = await db.DataSource.OpenConnectionAsync();
            var (keys, total, max) = await connection.QuerySingleAsync<(long, long, long)>($"SELECT count(*), coalesce(sum(applied), 0)::bigint, coalesce(max(applied), 0)::bigint FROM {table}");
            return new EffectCounts(keys, total, max);
        }

        public override void Cut()
        {
            base.Cut();
            proxied!.DataSource.Clear(); // pooled connections would otherwise fail one by one
        }

        public override async ValueTask DisposeAsync()
        {
            if (proxied is not null)
            {
                await proxied.DataSource.DisposeAsync();
            }

            await base.DisposeAsync();
        }

        protected override async ValueTask ApplyAsync(MessageContext context, CancellationToken cancellationToken) =>
            await context.GetNpgsqlConnection().ExecuteAsync(new CommandDefinition(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction(),
                cancellationToken: cancellationToken));
    }

    private sealed class RedisEffectStore(RedisEffects effects, RedisIdempotencyStore store, TcpProxy? proxy, ConnectionMultiplexer? proxied) : EffectStore(proxy)
    {
        public override StoreKind Kind => StoreKind.Redis;

        public override IIdempotencyStore Store => store;

        public static async Task<EffectStore> CreateAsync(RedisFixture redis, bool throughProxy)
        {
            var effects = new RedisEffects(redis);
            if (!throughProxy)
            {
                return new RedisEffectStore(effects, effects.CreateStore(), null, null);
            }

            // A claim that landed just before the cut, whose commit and release did not, keeps its key leased until the
            // lease expires (redeliveries are InProgress until then): a short lease keeps outage tests short.
            var (proxy, connection) = await redis.ConnectThroughProxyAsync();
            var options = RedisFixture.NewOptions();
            options.LeaseDuration = TimeSpan.FromSeconds(3);
            return new RedisEffectStore(effects, new RedisIdempotencyStore(connection, options), proxy, connection);
        }

        public override Task<EffectCounts> ReadAsync() => effects.ReadAsync();

        public override async ValueTask DisposeAsync()
        {
            if (proxied is not null)
            {
                await proxied.DisposeAsync();
            }

            await base.DisposeAsync();
        }

        protected override ValueTask ApplyAsync(MessageContext context, CancellationToken cancellationToken)
        {
            effects.Apply(context);
            return ValueTask.CompletedTask;
        }
    }
}
