using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>One test's queue topology, store and business table, and the handler that credits one row per new key.</summary>
internal sealed class Harness
{
    private int _runs;

    private Harness(PostgresFixture db, RabbitMqFixture mq, RabbitMqQueueTopology topology, PostgresIdempotencyStore store, string table)
    {
        Db = db;
        Mq = mq;
        Topology = topology;
        Store = store;
        Table = table;
    }

    public PostgresFixture Db { get; }

    public RabbitMqFixture Mq { get; }

    public RabbitMqQueueTopology Topology { get; }

    public string Queue => Topology.Queue;

    public PostgresIdempotencyStore Store { get; }

    public string Table { get; }

    /// <summary>How many times the handler body ran to the end (its writes done, commit pending).</summary>
    public int Runs => Volatile.Read(ref _runs);

    public static async Task<Harness> CreateAsync(PostgresFixture db, RabbitMqFixture mq, RabbitMqQueueType type = RabbitMqQueueType.Classic, string prefix = "q")
    {
        var topology = await RabbitMqTopology.DeclareAsync(mq.Channel, mq.NewQueueName(prefix), type);
        return new Harness(db, mq, topology, await db.CreateStoreAsync(), await db.CreateBusinessTableAsync());
    }

    public static byte[] Body(string key) => Encoding.UTF8.GetBytes($"{{\"key\":\"{key}\",\"amount\":5}}");

    public RabbitMqIdempotencyOptions Options(int concurrency = 1, int prefetch = 20, int batchSize = 1) =>
        Topology.ApplyTo(new RabbitMqIdempotencyOptions { Concurrency = concurrency, PrefetchCount = prefetch, BatchSize = batchSize, ShutdownTimeout = TimeSpan.FromSeconds(10) });

    public static IdempotencyOptions HandlerOptions(string name = "orders", int maxAttempts = 5) => new()
    {
        HandlerName = name,
        Retry = new RetryOptions { MaxAttempts = maxAttempts, InitialDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(100) },
        StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(400) },
    };

    /// <summary>A handler that adds one credit to the message key's business row, in the store's transaction.</summary>
    public IIdempotentMessageHandler Credit(Func<MessageContext, bool>? fail = null, Func<MessageContext, CancellationToken, Task>? before = null, Action<MessageContext>? afterWrite = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            if (before is not null)
            {
                await before(context, ct);
            }

            if (fail?.Invoke(context) == true)
            {
                throw new InvalidOperationException("poison message: handler failed on purpose");
            }

            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {Table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {Table}.amount + 5, applied = {Table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());
            Interlocked.Increment(ref _runs);
            afterWrite?.Invoke(context);
        });

    public IdempotentProcessor Processor(IIdempotentMessageHandler handler, IdempotencyOptions? options = null) =>
        new(Store, handler, options ?? HandlerOptions());

    public Task<long> RowsAsync() => Db.ScalarAsync<long>($"SELECT count(*) FROM {Table}");

    public Task<long> AppliedAsync() => Db.ScalarAsync<long>($"SELECT coalesce(sum(applied), 0) FROM {Table}");

    public Task<long> MaxAppliedAsync() => Db.ScalarAsync<long>($"SELECT coalesce(max(applied), 0) FROM {Table}");

    public Task<uint> ReadyAsync() => Mq.ReadyCountAsync(Queue);

    public Task<uint> DeadLetteredAsync() => Mq.ReadyCountAsync(Topology.DeadLetterQueue);

    public async Task<IdempotentRabbitMqConsumer> StartAsync(IConnection connection, IdempotentProcessor processor, RabbitMqIdempotencyOptions options)
    {
        var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, processor, options);
        await consumer.StartAsync();
        return consumer;
    }

    public static Task WaitUntilAsync(Func<Task<bool>> condition, int seconds, string what) =>
        RabbitMqFixture.WaitUntilAsync(condition, TimeSpan.FromSeconds(seconds), what);

    public static Task WaitUntilAsync(Func<bool> condition, int seconds, string what) =>
        RabbitMqFixture.WaitUntilAsync(() => Task.FromResult(condition()), TimeSpan.FromSeconds(seconds), what);
}
