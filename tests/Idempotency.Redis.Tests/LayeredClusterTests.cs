using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

/// <summary>The layered store with its Redis layer on a Redis Cluster: single messages go through Redis, batches to PostgreSQL alone.</summary>
[Collection(RedisClusterCollection.Name)] // one at a time: a failover test kills a primary of the shared cluster
public sealed class LayeredClusterTests(RedisClusterFixture cluster, PostgresFixture db) : IClassFixture<RedisClusterFixture>, IClassFixture<PostgresFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Single_messages_and_batches_on_a_cluster_apply_one_effect_per_key()
    {
        var postgres = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var store = new LayeredIdempotencyStore(cluster.Connection, RedisFixture.NewOptions(), postgres);
        Assert.True(store.Redis.KeySpace.IsCluster);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
                new { id = context.Key }, context.GetNpgsqlTransaction())), Options());
        var singles = Enumerable.Range(0, 300).Select(i => Message($"c-{i}")).ToList();
        var batched = Enumerable.Range(300, 300).Select(i => Message($"c-{i}")).ToList();

        var first = await ProcessUntilCommittedAsync(processor, [.. singles, .. singles.Take(60)], batchSize: 1, workers: 4, TimeSpan.FromMinutes(1));
        var second = await ProcessUntilCommittedAsync(processor, [.. batched, .. batched.Take(60), .. singles.Take(20)], batchSize: 50, workers: 4, TimeSpan.FromMinutes(1));

        Assert.Equal(300, first.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(60, first.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(300, second.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(80, second.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(600L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE applied = 1"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE applied <> 1"));
        Assert.NotNull(await store.Redis.FindAsync("orders", "c-7")); // a single message's Redis marker, on the cluster
    }
}
