using System.Text;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.Sqs.Outbox;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>The PostgreSQL outbox relayed to SQS with <see cref="SqsOutboxPublisher"/>, consumed downstream by the SQS worker.</summary>
public sealed class OutboxTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Relay_dying_after_send_republishes_by_queue_name_and_the_worker_applies_each_message_once()
    {
        var queue = await sqs.CreateQueueAsync("outbox");
        var queueName = queue[(queue.LastIndexOf('/') + 1)..];
        var upstreamStore = await db.CreateStoreAsync();
        await Upstream(upstreamStore, queueName).ProcessBatchAsync(Enumerable.Range(0, 25).Select(i => Incoming("order-" + i)).ToList(), Ct);

        var relay = new PostgresOutboxRelay(upstreamStore, new CrashAfterPublish(new SqsOutboxPublisher(sqs.CreateClient()), crashes: 1));
        await Assert.ThrowsAsync<InvalidOperationException>(() => relay.RelayOnceAsync(Ct));
        Assert.Equal(25L, await PendingAsync(upstreamStore));
        Assert.Equal(25, await relay.RelayOnceAsync(Ct));
        Assert.Equal(50, (await sqs.CountsAsync(queue)).Visible);

        var table = await db.CreateBusinessTableAsync();
        await using var worker = Start(sqs.CreateClient(), await db.CreateStoreAsync(), Credit(table), Handler("downstream"), Fast(queue));
        await sqs.WaitProcessedAsync(queue, db, table, 25, Long, worker);
        await worker.StopAsync();
        Assert.Equal(25L, await db.AppliedAsync(table));
        Assert.Equal(25L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} t JOIN {upstreamStore.QualifiedOutboxTableName} o ON o.message_id::text = t.id"));
    }

    [Fact]
    public async Task Fifo_queue_gets_group_per_key_and_dedup_id_per_message_so_a_republish_is_dropped_and_order_kept()
    {
        var queue = await sqs.CreateQueueAsync("outbox", fifo: true);
        var upstreamStore = await db.CreateStoreAsync();
        var processor = new IdempotentProcessor(upstreamStore, IdempotentHandler.Create((context, _) =>
        {
            // 3 customers, 4 events each, in sequence.
            for (var seq = 0; seq < 4; seq++)
            {
                context.AddOutgoing(new OutboxMessage(queue, context.Key, Encoding.UTF8.GetBytes($"{context.Key}:{seq}")));
            }

            return ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = "fifo-upstream" });
        await processor.ProcessBatchAsync([Incoming("cust-a"), Incoming("cust-b"), Incoming("cust-c")], Ct);

        var relay = new PostgresOutboxRelay(upstreamStore, new CrashAfterPublish(new SqsOutboxPublisher(sqs.CreateClient()), crashes: 1));
        await Assert.ThrowsAsync<InvalidOperationException>(() => relay.RelayOnceAsync(Ct));
        Assert.Equal(12, await relay.RelayOnceAsync(Ct));

        // SQS dropped the 12 republished copies (same MessageDeduplicationId): read everything, group by group.
        var client = sqs.CreateClient();
        var received = new List<Message>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (received.Count < 12 && DateTime.UtcNow < deadline)
        {
            var response = await client.ReceiveMessageAsync(new ReceiveMessageRequest { QueueUrl = queue, MaxNumberOfMessages = 10, WaitTimeSeconds = 1, MessageSystemAttributeNames = ["MessageGroupId"], MessageAttributeNames = ["All"] }, Ct);
            foreach (var message in response.Messages ?? [])
            {
                received.Add(message);
                await client.DeleteMessageAsync(queue, message.ReceiptHandle, Ct);
            }
        }

        Assert.Equal(12, received.Count);
        Assert.Equal((0, 0), await sqs.CountsAsync(queue));
        foreach (var group in received.GroupBy(m => m.Attributes["MessageGroupId"]))
        {
            Assert.Equal(Enumerable.Range(0, 4).Select(s => $"{group.Key}:{s}"), group.Select(m => m.Body));
        }

        var ids = await db.ScalarAsync<long>($"SELECT count(DISTINCT message_id) FROM {upstreamStore.QualifiedOutboxTableName}");
        Assert.Equal(12L, ids);
        Assert.Equal(12, received.Select(m => m.MessageAttributes[SqsIdempotencyOptions.DefaultKeyAttributeName].StringValue).Distinct().Count());
    }

    [Fact]
    public async Task Partial_batch_failure_throws_and_marks_nothing_sent()
    {
        var queue = await sqs.CreateQueueAsync("outbox-partial");
        var upstreamStore = await db.CreateStoreAsync();
        await Upstream(upstreamStore, queue).ProcessBatchAsync(Enumerable.Range(0, 15).Select(i => Incoming("p-" + i)).ToList(), Ct);
        var faulty = FaultySqs.Wrap(sqs.CreateClient());
        var calls = 0;
        faulty.Intercept = (name, args) =>
        {
            if (name != nameof(IAmazonSQS.SendMessageBatchAsync) || Interlocked.Increment(ref calls) != 2)
            {
                return null;
            }

            // The second chunk: the first entry fails, the others "succeed" (without being sent).
            var request = (SendMessageBatchRequest)args[0]!;
            return Task.FromResult(new SendMessageBatchResponse
            {
                Failed = [new BatchResultErrorEntry { Id = request.Entries[0].Id, Code = "InternalError", Message = "injected", SenderFault = false }],
                Successful = request.Entries.Skip(1).Select(e => new SendMessageBatchResultEntry { Id = e.Id, MessageId = Guid.NewGuid().ToString() }).ToList(),
            });
        };
        var relay = new PostgresOutboxRelay(upstreamStore, new SqsOutboxPublisher(faulty.Client));

        var error = await Assert.ThrowsAsync<SqsOutboxPublishException>(() => relay.RelayOnceAsync(Ct));
        Assert.True(error.IsTransient);
        Assert.Equal(15L, await PendingAsync(upstreamStore));

        Assert.Equal(15, await relay.RelayOnceAsync(Ct));
        Assert.Equal(0L, await PendingAsync(upstreamStore));
        Assert.Equal(25, (await sqs.CountsAsync(queue)).Visible); // first chunk of 10 twice, second chunk of 5 once
    }

    private static IncomingMessage Incoming(string key) => new(key, Encoding.UTF8.GetBytes($"{{\"key\":\"{key}\"}}"));

    private static IdempotentProcessor Upstream(PostgresIdempotencyStore store, string destination) =>
        new(store, IdempotentHandler.Create((context, _) =>
        {
            context.AddOutgoing(new OutboxMessage(destination, context.Key, context.Body, new Dictionary<string, string> { ["schema"] = "v1" }));
            return ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = "upstream", Retry = new RetryOptions { MaxAttempts = 1 } });

    private Task<long> PendingAsync(PostgresIdempotencyStore store) => db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL");

    private sealed class CrashAfterPublish(IOutboxPublisher inner, int crashes) : IOutboxPublisher
    {
        private int _left = crashes;

        public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            await inner.PublishAsync(messages, cancellationToken);
            if (Interlocked.Decrement(ref _left) >= 0)
            {
                throw new InvalidOperationException("relay died after publishing, before marking sent");
            }
        }
    }
}
