using System.Collections.Concurrent;
using Idempotency.InMemory;
using Idempotency.Storage;
using Idempotency.Testing;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

/// <summary>
/// The layered store over the in-memory store instead of PostgreSQL, on a real Redis: it relies on nothing but the
/// store interface of its source of truth.
/// </summary>
public sealed class LayeredOverInMemoryTests(RedisFixture redis) : IClassFixture<RedisFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>A handler whose effect commits with the in-memory transaction the layered store opened.</summary>
    private static IIdempotentMessageHandler Record(ConcurrentDictionary<string, int> effects) =>
        IdempotentHandler.Create((context, ct) =>
        {
            context.OnInMemoryCommit(() => effects.AddOrUpdate(context.Key, 1, (_, n) => n + 1));
            return ValueTask.CompletedTask;
        });

    [Fact]
    public async Task Every_effect_commits_once_in_the_source_and_duplicates_never_open_it()
    {
        var source = new CountingStore(new InMemoryIdempotencyStore());
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), source);
        var effects = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var processor = new IdempotentProcessor(store, Record(effects), Options());
        var messages = Enumerable.Range(0, 120).Select(i => Message($"m-{i}")).ToList();

        var first = await ProcessUntilCommittedAsync(processor, messages, batchSize: 20, workers: 2, TimeSpan.FromSeconds(30));
        var beginsForNewKeys = source.Begins;
        var again = await ProcessUntilCommittedAsync(processor, messages, batchSize: 20, workers: 2, TimeSpan.FromSeconds(30));
        var single = await processor.ProcessAsync(Redelivery("m-7"), Ct);

        Assert.All(first, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));
        Assert.All(again, r => Assert.Equal(ProcessingOutcome.Duplicate, r.Outcome));
        Assert.Equal(ProcessingOutcome.Duplicate, single.Outcome);
        Assert.Equal(120, effects.Count);
        Assert.All(effects.Values, n => Assert.Equal(1, n));
        Assert.Equal(120, source.Inner.Count);
        Assert.True(beginsForNewKeys > 0, "the source was never opened, so the count proves nothing");
        Assert.Equal(beginsForNewKeys, source.Begins); // 121 duplicates answered by Redis alone
        Assert.Equal("redis+memory", store.Name);
    }

    [Fact]
    public async Task A_missing_redis_marker_is_answered_by_the_source_and_restored()
    {
        var source = new InMemoryIdempotencyStore();
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), source);
        var effects = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var processor = new IdempotentProcessor(store, Record(effects), Options(policy: PayloadMismatchPolicy.Fail));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("evicted"), Ct)).Outcome);
        await store.Redis.Database.KeyDeleteAsync(store.Redis.GetKey("orders", "evicted"));

        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("evicted"), Ct)).Outcome);
        Assert.NotNull(await store.Redis.FindAsync("orders", "evicted"));
        Assert.Equal(ProcessingOutcome.PayloadMismatch, (await processor.ProcessAsync(Message("evicted", "{\"amount\":9}"), Ct)).Outcome);
        Assert.Equal(1, effects["evicted"]);
    }

    [Fact]
    public async Task A_failing_handler_commits_nothing_in_either_layer_and_its_retry_applies_once()
    {
        var source = new InMemoryIdempotencyStore();
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), source);
        var effects = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var fail = true;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
        {
            context.OnInMemoryCommit(() => effects.AddOrUpdate(context.Key, 1, (_, n) => n + 1));
            return fail ? throw new InvalidOperationException("handler bug") : ValueTask.CompletedTask;
        }), Options());

        var failed = await processor.ProcessAsync(Message("flaky"), Ct);
        fail = false;
        var retried = await processor.ProcessAsync(Redelivery("flaky"), Ct);

        Assert.Equal(ProcessingOutcome.Failed, failed.Outcome);
        Assert.Equal(ProcessingOutcome.Processed, retried.Outcome);
        Assert.Equal(1, effects["flaky"]);
        Assert.NotNull(source.Find("orders", "flaky"));
    }

    [Fact]
    public async Task A_misconfigured_source_is_classified_by_the_source_and_never_blamed_on_the_message()
    {
        var source = new InMemoryIdempotencyStore { Misconfiguration = "table t does not exist" };
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), source);
        var processor = new IdempotentProcessor(store, Record(new(StringComparer.Ordinal)), Options());

        var result = await processor.ProcessAsync(Message("k"), Ct);

        Assert.Equal(ProcessingOutcome.StoreMisconfigured, result.Outcome);
        Assert.Equal(StoreFailureKind.Misconfiguration, result.StoreFailure?.Kind);
        Assert.Equal(StoreFailureKind.Misconfiguration, (await store.CheckAsync(Ct))?.Kind);
        Assert.Equal(
            StoreFailureKind.Misconfiguration,
            store.ClassifyFailure(new StackExchange.Redis.RedisServerException(StackExchange.Redis.RedisErrorKind.NoAuth, StackExchange.Redis.CommandFlags.None, "NOAUTH Authentication required.")).Kind);
    }

    [Fact]
    public async Task Forgetting_a_key_forgets_it_in_the_source_and_in_redis()
    {
        var source = new InMemoryIdempotencyStore();
        var store = new LayeredIdempotencyStore(redis.Connection, RedisFixture.NewOptions(), source);
        var effects = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var processor = new IdempotentProcessor(store, Record(effects), Options());
        await processor.ProcessAsync(Message("again"), Ct);

        Assert.True(await store.ForgetKeyAsync("orders", "again", Ct));
        Assert.Null(source.Find("orders", "again"));
        Assert.Null(await store.Redis.FindAsync("orders", "again"));
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("again"), Ct)).Outcome);
        Assert.Equal(2, effects["again"]);
    }

    [Fact]
    public async Task UseLayeredRedis_puts_redis_in_front_of_the_source_it_is_given()
    {
        var source = new InMemoryIdempotencyStore();
        var prefix = RedisFixture.NewPrefix();
        var services = new ServiceCollection();
        services.AddIdempotency()
            .UseLayeredRedis(_ => redis.Connection, o => o.KeyPrefix = prefix, _ => source);
        await using var provider = services.BuildServiceProvider();

        var store = Assert.IsType<LayeredIdempotencyStore>(provider.GetRequiredService<IIdempotencyStore>());
        var processor = new IdempotentProcessor(store, Record(new(StringComparer.Ordinal)), Options());

        Assert.Same(source, store.Source);
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("di"), Ct)).Outcome);
        Assert.NotNull(source.Find("orders", "di"));
        Assert.NotNull(await store.Redis.FindAsync("orders", "di"));
        Assert.StartsWith(prefix, store.Redis.GetKey("orders", "di").ToString(), StringComparison.Ordinal);
    }

    /// <summary>Counts the transactions opened on the source of truth.</summary>
    private sealed class CountingStore(InMemoryIdempotencyStore inner) : IIdempotencyStore
    {
        private int _begins;

        public InMemoryIdempotencyStore Inner => inner;

        public int Begins => Volatile.Read(ref _begins);

        public string Name => inner.Name;

        public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _begins);
            return inner.BeginAsync(cancellationToken);
        }

        public bool IsUnavailable(Exception exception) => inner.IsUnavailable(exception);

        public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => inner.PingAsync(cancellationToken);
    }
}
