using System.Collections.Concurrent;
using System.Diagnostics;
using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using StackExchange.Redis;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

public sealed class LayeredStoreTests(RedisFixture redis, PostgresFixture db) : IClassFixture<RedisFixture>, IClassFixture<PostgresFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A handler that credits a business row in the PostgreSQL transaction the layered store opened.</summary>
    private static IIdempotentMessageHandler Credit(string table, TimeSpan delay = default) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            if (delay > TimeSpan.Zero)
            {
                await Task.Delay(delay, ct);
            }

            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {table}.amount + 5, applied = {table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());
        });

    [Fact]
    public async Task Duplicates_are_filtered_by_redis_without_touching_postgresql_and_every_effect_has_its_row()
    {
        var postgres = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), postgres);
        var processor = new IdempotentProcessor(store, Credit(table), Options());
        var messages = Enumerable.Range(0, 200).Select(i => Message($"l-{i}")).ToList();
        using var commands = new PostgresCommandCounter(postgres.Options.Table);

        var first = await ProcessUntilCommittedAsync(processor, messages, batchSize: 50, workers: 2, TimeSpan.FromSeconds(30));
        var commandsForNewKeys = commands.Count;
        var again = await ProcessUntilCommittedAsync(processor, messages, batchSize: 50, workers: 2, TimeSpan.FromSeconds(30));
        var single = await processor.ProcessAsync(Redelivery("l-7"), Ct);

        Assert.All(first, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));
        Assert.All(again, r => Assert.Equal(ProcessingOutcome.Duplicate, r.Outcome));
        Assert.Equal(ProcessingOutcome.Duplicate, single.Outcome);
        Assert.True(commandsForNewKeys > 0, "the counter saw no PostgreSQL command at all, so it proves nothing");
        Assert.Equal(commandsForNewKeys, commands.Count); // 201 duplicates: not one statement on the idempotency table
        Assert.Equal(200L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE applied = 1"));
        Assert.Equal(200L, await db.ScalarAsync<long>($"SELECT count(*) FROM {postgres.QualifiedTableName} WHERE completed_at IS NOT NULL"));
        Assert.NotNull(await store.Redis.FindAsync("orders", "l-7"));
    }

    [Fact]
    public async Task Commit_is_refused_when_another_worker_took_the_expired_lease_and_postgresql_applies_the_effect_once()
    {
        var postgres = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var prefix = RedisFixture.NewPrefix();
        var slowStore = new LayeredIdempotencyStore(redis.Connection, new RedisIdempotencyStoreOptions { KeyPrefix = prefix, LeaseDuration = TimeSpan.FromMilliseconds(300) }, postgres);
        var fastStore = new LayeredIdempotencyStore(redis.Connection, new RedisIdempotencyStoreOptions { KeyPrefix = prefix }, postgres);
        var slowStarted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var releaseSlow = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var slowHandler = Credit(table);
        var slow = new IdempotentProcessor(slowStore, IdempotentHandler.Create(async (context, ct) =>
        {
            slowStarted.TrySetResult();
            await releaseSlow.Task.WaitAsync(ct);
            await slowHandler.HandleAsync(context, ct);
        }), Options());
        var fast = new IdempotentProcessor(fastStore, Credit(table), Options());

        // Steps are driven by what Redis shows, not by sleeps, so a slow machine cannot reorder them.
        var slowRun = slow.ProcessAsync(Message("contested"), Ct).AsTask();
        await slowStarted.Task.WaitAsync(TimeSpan.FromSeconds(30), Ct);
        // The claim keeps the slow worker's token in the key until another worker takes it over (its lease may be gone already).
        var slowToken = RedisRecord.ClaimToken(await slowStore.Redis.Database.StringGetAsync(slowStore.Redis.GetKey("orders", "contested")));
        Assert.NotNull(slowToken);
        await WaitUntilAsync(async () => await slowStore.Redis.FindLeaseTokenAsync("orders", "contested") is null); // the slow worker's lease expired
        var fastRun = fast.ProcessAsync(Message("contested"), Ct).AsTask(); // takes the key over, then waits on the uncommitted row
        await WaitUntilAsync(async () => await slowStore.Redis.FindLeaseTokenAsync("orders", "contested") is { } token && token != slowToken);
        releaseSlow.SetResult();
        var slowResult = await slowRun;
        var fastResult = await fastRun;

        Assert.Equal(ProcessingOutcome.LeaseLost, slowResult.Outcome); // ClaimLostException: its transaction rolled back, and the outcome says the lease was lost
        Assert.Equal(ProcessingOutcome.Processed, fastResult.Outcome);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'contested'"));
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {postgres.QualifiedTableName}"));
        Assert.Equal(ProcessingOutcome.Duplicate, (await slow.ProcessAsync(Message("contested"), Ct)).Outcome);
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = Stopwatch.StartNew();
        while (!await condition())
        {
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), "condition not reached within 30 s");
            await Task.Delay(10, Ct);
        }
    }

    [Fact]
    public async Task Lease_held_by_another_worker_answers_in_progress_before_postgresql_is_asked()
    {
        var postgres = await db.CreateStoreAsync();
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), postgres);
        var holder = (LayeredIdempotencyTransaction)await store.BeginAsync(Ct);
        Assert.Equal(Storage.ClaimStatus.Claimed, (await holder.ClaimAsync(Claim("busy"), Ct)).Status);

        var other = (LayeredIdempotencyTransaction)await store.BeginAsync(Ct);
        Assert.Equal(Storage.ClaimStatus.HeldByAnother, (await other.ClaimAsync(Claim("busy"), Ct)).Status);
        Assert.False(other.HasSourceTransaction);
        await other.DisposeAsync();
        await holder.DisposeAsync();
        Assert.False(await store.Redis.Database.KeyExistsAsync(store.Redis.GetKey("orders", "busy")));
    }

    [Fact]
    public async Task Missing_redis_marker_falls_back_to_postgresql_and_is_restored()
    {
        var postgres = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), postgres);
        var processor = new IdempotentProcessor(store, Credit(table), Options(policy: PayloadMismatchPolicy.Fail));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("evicted"), Ct)).Outcome);
        await store.Redis.Database.KeyDeleteAsync(store.Redis.GetKey("orders", "evicted")); // evicted or expired

        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("evicted"), Ct)).Outcome);
        Assert.NotNull(await store.Redis.FindAsync("orders", "evicted"));
        Assert.Null(await store.Redis.FindLeaseTokenAsync("orders", "evicted"));
        Assert.Equal(ProcessingOutcome.PayloadMismatch, (await processor.ProcessAsync(Message("evicted", "{\"amount\":9}"), Ct)).Outcome);
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'evicted'"));
    }

    [Fact]
    public async Task Unreachable_redis_leaves_the_layered_store_working_on_postgresql_alone()
    {
        var postgres = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await using var deadRedis = await ConnectionMultiplexer.ConnectAsync("127.0.0.1:1,abortConnect=false,connectTimeout=200");
        var store = new LayeredIdempotencyStore(deadRedis, RedisFixture.NewOptions(), postgres);
        var processor = new IdempotentProcessor(store, Credit(table), Options());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("no-redis"), Ct)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("no-redis"), Ct)).Outcome);
        Assert.True(await store.PingAsync(Ct));
        Assert.Equal(1, await db.ScalarAsync<int>($"SELECT applied FROM {table} WHERE id = 'no-redis'"));
    }

    [Fact]
    public void Bad_redis_options_fail_the_layered_store_at_start_up()
    {
        var error = Assert.Throws<ArgumentException>(() => new LayeredIdempotencyStore(redis.Connection, new RedisIdempotencyStoreOptions(), new PostgresIdempotencyStore(db.DataSource)));
        Assert.Contains("KeyPrefix", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Failures_are_classified_by_the_layer_they_come_from()
    {
        var postgres = new PostgresIdempotencyStore(db.DataSource);
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), postgres);

        var missingTable = store.ClassifyFailure(new Npgsql.PostgresException("relation does not exist", "ERROR", "ERROR", "42P01"));
        var rejectedWrite = store.ClassifyFailure(new Npgsql.PostgresException("duplicate key", "ERROR", "ERROR", "23505"));
        var redisAuth = store.ClassifyFailure(new RedisServerException(RedisErrorKind.WrongPass, StackExchange.Redis.CommandFlags.None, "WRONGPASS invalid username-password pair"));
        var redisDown = store.ClassifyFailure(new RedisConnectionException(ConnectionFailureType.UnableToConnect, StackExchange.Redis.CommandFlags.None, "refused", null, CommandStatus.Unknown));

        Assert.Equal(Storage.StoreFailureKind.Misconfiguration, missingTable.Kind);
        Assert.Contains(postgres.QualifiedTableName, missingTable.Description, StringComparison.Ordinal);
        Assert.Equal(Storage.StoreFailureKind.WriteRejected, rejectedWrite.Kind);
        Assert.Equal(Storage.StoreFailureKind.Misconfiguration, redisAuth.Kind);
        Assert.Equal(Storage.StoreFailureKind.Outage, redisDown.Kind);
        Assert.Equal("redis+postgres", store.Name);
    }

    [Fact]
    public async Task UseLayeredRedis_after_UsePostgres_layers_redis_over_the_registered_postgresql_store()
    {
        var services = new ServiceCollection();
        var prefix = RedisFixture.NewPrefix();
        services.AddIdempotency()
            .UsePostgres(_ => db.DataSource)
            .UseLayeredRedis(_ => redis.Connection, o => o.KeyPrefix = prefix, sp => sp.GetRequiredService<PostgresIdempotencyStore>());
        await using var provider = services.BuildServiceProvider();

        var store = Assert.IsType<LayeredIdempotencyStore>(provider.GetRequiredService<Storage.IIdempotencyStore>());

        Assert.Same(provider.GetRequiredService<PostgresIdempotencyStore>(), store.Source);
        Assert.Same(provider.GetRequiredService<RedisIdempotencyStore>(), store.Redis);
        Assert.True(await store.PingAsync(Ct));
    }

    /// <summary>Counts the PostgreSQL commands (from Npgsql's own tracing) that name one table.</summary>
    private sealed class PostgresCommandCounter : IDisposable
    {
        private readonly ActivityListener _listener;
        private readonly ConcurrentBag<string> _seen = [];

        public PostgresCommandCounter(string table)
        {
            _listener = new ActivityListener
            {
                ShouldListenTo = source => source.Name == "Npgsql",
                Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
                ActivityStopped = activity =>
                {
                    foreach (var tag in activity.TagObjects)
                    {
                        if (tag.Value is string text && text.Contains(table, StringComparison.Ordinal))
                        {
                            _seen.Add(text);
                            return;
                        }
                    }
                },
            };
            ActivitySource.AddActivityListener(_listener);
        }

        public int Count => _seen.Count;

        public void Dispose() => _listener.Dispose();
    }
}
