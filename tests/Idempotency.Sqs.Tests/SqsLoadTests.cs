using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsLoadTests(SqsFixture sqs, PostgresFixture db, RedisFixture redis) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Five_thousand_messages_with_twenty_percent_duplicates_and_four_workers_give_one_effect_per_unique_key(StoreKind kind)
    {
        const int unique = 4000;
        const int duplicates = 1000;
        var queue = await sqs.CreateQueueAsync("load");
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        var random = new Random(5);
        var messages = Enumerable.Range(0, unique).Select(i => (Body: $"{{\"order\":{i}}}", Key: (string?)$"order-{i}"))
            .Concat(Enumerable.Range(0, duplicates).Select(i => (Body: $"{{\"order\":{i * 4}}}", Key: (string?)$"order-{i * 4}")))
            .OrderBy(_ => random.Next())
            .ToList();
        await sqs.SendManyAsync(queue, messages);

        var workers = new List<RunningWorker>();
        for (var i = 0; i < 4; i++)
        {
            workers.Add(Start(sqs.CreateClient(), store.Store, store.Handler(), Handler("load"), Fast(queue, visibilitySeconds: 3)));
        }

        try
        {
            await sqs.WaitProcessedAsync(queue, store, unique, TimeSpan.FromSeconds(90), [.. workers]);
        }
        finally
        {
            foreach (var worker in workers)
            {
                await worker.DisposeAsync();
            }
        }

        Assert.Equal(new EffectCounts(unique, unique, 1), await store.ReadAsync());
        Assert.True(workers.Sum(w => w.Statistics.Deleted) >= unique + duplicates); // more only if a visibility expired under load
        Assert.Equal(0, workers.Sum(w => w.Statistics.DeleteFailures));
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }
}
