using System.Collections.Concurrent;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>The step inside a receive loop the test writes by hand, as a team that keeps its own loop would.</summary>
public sealed class SqsIdempotentStepTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    /// <summary>A plain SQS receive loop; the only idempotency line is the step's call.</summary>
    private static async Task ReceiveLoopAsync(IAmazonSQS client, string queue, SqsIdempotentStep step, Func<Task<bool>> done, Action<Message>? received = null, Action<Message, StepResult>? carriedOut = null)
    {
        var ct = TestContext.Current.CancellationToken;
        var deadline = DateTime.UtcNow + Long;
        while (!await done())
        {
            Assert.True(DateTime.UtcNow < deadline, "the loop finished within the time allowed");
            var response = await client.ReceiveMessageAsync(new ReceiveMessageRequest
            {
                QueueUrl = queue,
                MaxNumberOfMessages = 10,
                WaitTimeSeconds = 1,
                VisibilityTimeout = 10,
                MessageAttributeNames = ["All"],
                MessageSystemAttributeNames = ["All"],
            }, ct);
            foreach (var message in response.Messages ?? [])
            {
                received?.Invoke(message);
                var result = await step.RunAndCarryOutAsync(client, message, ct);
                carriedOut?.Invoke(message, result);
            }
        }
    }

    [Fact]
    public async Task Duplicates_are_skipped_in_a_hand_written_loop_and_effects_equal_unique_keys()
    {
        var queue = await sqs.CreateQueueAsync("step-dup");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 20).Select(i => ($"{{\"i\":{i}}}", (string?)$"sd-{i % 12}"))]);
        using var client = sqs.CreateClient();
        var step = new SqsIdempotentStep(new IdempotentProcessor(store, Credit(table), Handler("step-dup")), new SqsIdempotencyOptions { QueueUrl = queue });

        await ReceiveLoopAsync(client, queue, step, async () => await db.RowsAsync(table) == 12 && await sqs.DrainedAsync(queue));

        Assert.Equal(12L, await db.RowsAsync(table));
        Assert.Equal(12L, await db.AppliedAsync(table));   // 8 copies were duplicates: no second effect
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task A_failing_handler_is_retried_then_dead_lettered_with_its_reason_and_nothing_is_deleted_before_its_commit()
    {
        var queue = await sqs.CreateQueueAsync("step-poison");
        var deadLetter = await sqs.CreateQueueAsync("step-poison-dlq");
        var store = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 9).Select(i => ($"{{\"i\":{i}}}", (string?)$"sp-{i}")), ("{\"poison\":true}", "sp-poison")]);

        // Every delete is checked against PostgreSQL at the moment it is sent: the key's effect must be committed
        // already, or (the poison message) its dead-letter copy sent.
        var keys = new ConcurrentDictionary<string, string>();
        var deadLetterSends = 0;
        var deletedEarly = new ConcurrentBag<string>();
        var faulty = FaultySqs.Wrap(sqs.CreateClient());
        faulty.Intercept = (name, args) =>
        {
            if (name == nameof(IAmazonSQS.SendMessageAsync) && args[0] is SendMessageRequest { QueueUrl: var url } && url == deadLetter)
            {
                Interlocked.Increment(ref deadLetterSends);
            }
            else if (name == nameof(IAmazonSQS.DeleteMessageAsync) && args.Length == 3 && keys.TryGetValue((string)args[1]!, out var key))
            {
                var committed = key == "sp-poison"
                    ? Volatile.Read(ref deadLetterSends) == 1
                    : db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE id = @key", new { key }).GetAwaiter().GetResult() == 1;
                if (!committed)
                {
                    deletedEarly.Add(key);
                }
            }

            return null;
        };
        var handler = Credit(table, (context, _) => context.Key == "sp-poison" ? throw new InvalidOperationException("poison sp-poison") : Task.CompletedTask);
        var step = new SqsIdempotentStep(
            new IdempotentProcessor(store, handler, Handler("step-poison", maxAttempts: 3)),
            new SqsIdempotencyOptions { QueueUrl = queue, DeadLetterQueueUrl = deadLetter });
        var actions = new ConcurrentQueue<(string? Key, DeliveryAction Action, int Attempt)>();

        using var client = faulty.Client;
        await ReceiveLoopAsync(
            client,
            queue,
            step,
            async () => await db.RowsAsync(table) == 9 && await sqs.DrainedAsync(queue) && (await sqs.CountsAsync(deadLetter)).Visible == 1,
            message => keys[message.ReceiptHandle] = message.MessageAttributes["IdempotencyKey"].StringValue,
            (_, result) => actions.Enqueue((result.Result.Message.Key, result.Action, result.Attempt)));

        Assert.Empty(deletedEarly);
        Assert.Equal(9L, await db.AppliedAsync(table));
        Assert.Equal(
            [(DeliveryAction.Retry, 1), (DeliveryAction.Retry, 2), (DeliveryAction.DeadLetter, 3)],
            actions.Where(a => a.Key == "sp-poison").Select(a => (a.Action, a.Attempt)));
        var dead = Assert.Single(await sqs.ReceiveAllAsync(deadLetter, 1, TimeSpan.FromSeconds(10)));
        Assert.Equal("{\"poison\":true}", dead.Body);
        Assert.Equal("sp-poison", dead.MessageAttributes["IdempotencyKey"].StringValue);
        Assert.Equal(DeliveryPolicy.HandlerFailed, dead.MessageAttributes[DeadLetterHeaders.ReasonCode].StringValue);
        Assert.Equal("3", dead.MessageAttributes[DeadLetterHeaders.Attempts].StringValue);
        Assert.Equal(queue, dead.MessageAttributes[SqsDeadLetterAttributes.SourceQueue].StringValue);
        Assert.Contains("poison sp-poison", dead.MessageAttributes[DeadLetterHeaders.ErrorMessage].StringValue, StringComparison.Ordinal);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }

    [Fact]
    public async Task A_store_without_its_schema_pauses_the_loop_spends_no_attempt_and_resumes_once_created()
    {
        var queue = await sqs.CreateQueueAsync("step-misconf");
        var deadLetter = await sqs.CreateQueueAsync("step-misconf-dlq");
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, [.. Enumerable.Range(0, 6).Select(i => ($"{{\"i\":{i}}}", (string?)$"sm-{i}"))]);
        var store = new PostgresIdempotencyStore(db.DataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = "never_created_" + Guid.NewGuid().ToString("N")[..8] });
        var step = new SqsIdempotentStep(
            new IdempotentProcessor(store, Credit(table), Handler("step-misconf", maxAttempts: 1)),   // one attempt: any spent would dead-letter
            new SqsIdempotencyOptions { QueueUrl = queue, DeadLetterQueueUrl = deadLetter });
        var pauses = 0;
        using var client = sqs.CreateClient();

        // The schema appears a few seconds after the loop met the misconfiguration and is waiting on the store.
        var fix = Task.Run(async () =>
        {
            await SqsFixture.WaitUntilAsync(() => Task.FromResult(!step.IsStoreReady), Long, "the step to find the store misconfigured");
            await Task.Delay(TimeSpan.FromSeconds(3), TestContext.Current.CancellationToken);
            Assert.Equal(0L, await db.RowsAsync(table));
            await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        }, TestContext.Current.CancellationToken);
        await ReceiveLoopAsync(client, queue, step, async () => await db.RowsAsync(table) == 6 && await sqs.DrainedAsync(queue),
            carriedOut: (_, result) =>
            {
                if (result.Action == DeliveryAction.PauseAndRetry)
                {
                    Assert.True(result.StoreReady.IsCompleted, "the step returned only once the store answered");
                    Interlocked.Increment(ref pauses);
                }
            });
        await fix;

        Assert.True(pauses >= 1, "the loop met the missing schema");
        Assert.Equal(6L, await db.AppliedAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetter));
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
    }
}
