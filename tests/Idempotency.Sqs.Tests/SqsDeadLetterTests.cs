using Idempotency.Delivery;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

public sealed class SqsDeadLetterTests(SqsFixture sqs, PostgresFixture db, RedisFixture redis) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>, IClassFixture<RedisFixture>
{
    [Theory]
    [InlineData(StoreKind.Postgres)]
    [InlineData(StoreKind.Redis)]
    public async Task Poison_message_is_sent_to_the_dead_letter_queue_after_max_attempts_and_the_rest_are_processed(StoreKind kind)
    {
        var queue = await sqs.CreateQueueAsync("poison");
        var deadLetter = await sqs.CreateQueueAsync("poison-dlq");
        await using var store = await EffectStore.CreateAsync(kind, db, redis);
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 20).Select(i => ($"{{\"i\":{i}}}", (string?)$"p-{i}")), ("{\"no\":\"key\"}", null)]);

        var handler = store.Handler(fail: context => context.Key == "p-7");
        var options = Fast(queue, visibilitySeconds: 2);
        options.DeadLetterQueueUrl = deadLetter;
        await using var worker = Start(sqs.CreateClient(), store.Store, handler, Handler("poison", maxAttempts: 3), options);

        await sqs.WaitProcessedAsync(queue, store, 20 - 1, Long, worker);
        await SqsFixture.WaitUntilAsync(async () => (await sqs.CountsAsync(deadLetter)).Visible == 2, Long, "two messages in the dead-letter queue");
        await worker.StopAsync();

        var dead = await sqs.ReceiveAllAsync(deadLetter, 2, TimeSpan.FromSeconds(10));
        Assert.Equal(2, dead.Count);
        var poison = Assert.Single(dead, m => m.MessageAttributes.TryGetValue(DeadLetterHeaders.Key, out var k) && k.StringValue == "p-7");
        Assert.Equal("{\"i\":7}", poison.Body);
        Assert.Equal(DeliveryPolicy.HandlerFailed, poison.MessageAttributes[DeadLetterHeaders.ReasonCode].StringValue);
        Assert.Equal("3", poison.MessageAttributes[DeadLetterHeaders.Attempts].StringValue);
        Assert.Equal("p-7", poison.MessageAttributes["IdempotencyKey"].StringValue);
        Assert.Equal(queue, poison.MessageAttributes[SqsDeadLetterAttributes.SourceQueue].StringValue);
        Assert.Contains("poison message p-7", poison.MessageAttributes[DeadLetterHeaders.ErrorMessage].StringValue, StringComparison.Ordinal);
        var keyless = Assert.Single(dead, m => m != poison);
        Assert.Equal(DeliveryPolicy.InvalidKey, keyless.MessageAttributes[DeadLetterHeaders.ReasonCode].StringValue);
        Assert.Equal("1", keyless.MessageAttributes[DeadLetterHeaders.Attempts].StringValue); // no retries for a missing key

        Assert.Equal(new EffectCounts(19, 19, 1), await store.ReadAsync());
        Assert.Equal(2, worker.Statistics.DeadLettered);
        Assert.Equal(2, worker.Statistics.Retried);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task Without_a_dead_letter_url_the_queues_redrive_policy_moves_the_poison_message_and_the_rest_are_processed()
    {
        var (queue, deadLetter) = await sqs.CreateQueueWithRedriveAsync("redrive", maxReceiveCount: 3);
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 10).Select(i => ($"{{\"i\":{i}}}", (string?)$"r-{i}"))]);

        var handler = Credit(table, (context, _) => context.Key == "r-4" ? throw new InvalidOperationException("poison r-4") : Task.CompletedTask);
        await using var worker = Start(sqs.CreateClient(), store, handler, Handler("redrive", maxAttempts: 3), Fast(queue, visibilitySeconds: 2));

        await sqs.WaitProcessedAsync(queue, db, table, 9, Long, worker);
        await SqsFixture.WaitUntilAsync(async () => (await sqs.CountsAsync(deadLetter)).Visible == 1, Long, "the poison message in the redrive dead-letter queue");
        await worker.StopAsync();

        var moved = Assert.Single(await sqs.ReceiveAllAsync(deadLetter, 1, TimeSpan.FromSeconds(10)));
        Assert.Equal("{\"i\":4}", moved.Body);
        Assert.Equal("r-4", moved.MessageAttributes["IdempotencyKey"].StringValue);
        Assert.Equal(0, worker.Statistics.DeadLettered);
        Assert.Equal(9L, await db.AppliedAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }
}
