using System.Text;
using Amazon.SQS;
using Amazon.SQS.Model;
using System.Text.Json;
using Confluent.Kafka;
using Dapper;
using Idempotency.Kafka;
using Idempotency.Kafka.Outbox;
using Idempotency.Kafka.Tests;
using Idempotency.Outbox;
using Idempotency.RabbitMQ;
using Idempotency.RabbitMQ.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.Sqs.Outbox;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>The PostgreSQL outbox relayed to SQS with <see cref="SqsOutboxPublisher"/>, consumed downstream by the SQS worker.</summary>
public sealed class OutboxTests(SqsFixture sqs, PostgresFixture db, RabbitMqFixture mq) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Kafka_to_RabbitMQ_to_SQS_through_two_outboxes_with_duplicates_at_every_hop_applies_each_order_once()
    {
        const int orders = 30;
        var orderIds = Enumerable.Range(0, orders).Select(i => $"order-{i}").ToList();

        // Hop 1: Kafka, every 5th order produced twice.
        using var cluster = MockKafkaCluster.Start();
        var topic = "orders-" + Guid.NewGuid().ToString("N")[..8];
        cluster.CreateTopic(topic, 3);
        using (var producer = cluster.CreateProducer())
        {
            foreach (var id in orderIds.Concat(orderIds.Where((_, i) => i % 5 == 0)))
            {
                var key = Encoding.UTF8.GetBytes(id);
                await producer.ProduceAsync(topic, new Message<byte[]?, byte[]?> { Key = key, Value = Encoding.UTF8.GetBytes($"{{\"id\":\"{id}\"}}"), Headers = new Headers { { KafkaIdempotencyOptions.DefaultKeyHeader, key } } }, Ct);
            }
        }

        var rabbitTopology = await RabbitMqTopology.DeclareAsync(mq.Channel, mq.NewQueueName("e2e"), RabbitMqQueueType.Classic, cancellationToken: Ct);
        var sqsQueue = await sqs.CreateQueueAsync("e2e");
        var kafkaStore = await db.CreateStoreAsync();
        var rabbitStore = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);

        // Kafka consumer -> outbox -> RabbitMQ (the relay dies once after publishing: the batch goes out twice).
        using var kafkaConsumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(
            new ConsumerConfig { BootstrapServers = cluster.BootstrapServers, GroupId = "e2e-" + Guid.NewGuid().ToString("N")[..6], AutoOffsetReset = AutoOffsetReset.Earliest, SessionTimeoutMs = 6000 },
            new IdempotentProcessor(kafkaStore, Forward(rabbitTopology.Queue), Handler("e2e-kafka")),
            KafkaOptions(topic));
        var kafkaRun = kafkaConsumer.RunAsync(stop.Token);
        await using var rabbitConnection = await mq.CreateConnectionAsync("e2e-relay");
        await using var rabbitPublisher = new RabbitMqOutboxPublisher(rabbitConnection);
        var relayOptions = new PostgresOutboxRelayOptions { PollInterval = TimeSpan.FromMilliseconds(200), FailureBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(200) } };
        var crash1 = new CrashAfterPublish(rabbitPublisher, crashes: 1);
        var relay1 = new PostgresOutboxRelay(kafkaStore, crash1, relayOptions).RunAsync(stop.Token);

        // RabbitMQ consumer -> outbox -> SQS (again one republish).
        await using var consumerConnection = await mq.CreateConnectionAsync("e2e-consumer");
        var rabbitConsumer = await IdempotentRabbitMqConsumer.CreateAsync(consumerConnection, new IdempotentProcessor(rabbitStore, Forward(sqsQueue), Handler("e2e-rabbit")), rabbitTopology.ApplyTo(new RabbitMqIdempotencyOptions { PrefetchCount = 20 }), cancellationToken: Ct);
        await rabbitConsumer.StartAsync(Ct);
        var crash2 = new CrashAfterPublish(new SqsOutboxPublisher(sqs.CreateClient()), crashes: 1);
        var relay2 = new PostgresOutboxRelay(rabbitStore, crash2, relayOptions).RunAsync(stop.Token);

        // SQS worker: the final effect, one row per order, counted.
        var finalHandler = IdempotentHandler.Create(async (context, _) =>
        {
            var id = JsonDocument.Parse(context.Body).RootElement.GetProperty("id").GetString();
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
                new { id }, context.GetNpgsqlTransaction());
        });
        await using var worker = Start(sqs.CreateClient(), await db.CreateStoreAsync(), finalHandler, Handler("e2e-sqs"), Fast(sqsQueue));

        await SqsFixture.WaitUntilAsync(
            async () => await db.RowsAsync(table) == orders && await sqs.DrainedAsync(sqsQueue) && await Pending(kafkaStore) == 0 && await Pending(rabbitStore) == 0 && await mq.ReadyCountAsync(rabbitTopology.Queue) == 0,
            Long,
            "every order applied, every outbox drained, every queue empty",
            async () => $"rows={await db.RowsAsync(table)} applied={await db.AppliedAsync(table)} kafka-outbox pending={await Pending(kafkaStore)} rabbit-outbox pending={await Pending(rabbitStore)} rabbit ready={await mq.ReadyCountAsync(rabbitTopology.Queue)}");
        await Task.Delay(1000, Ct); // room for a late duplicate to land
        await worker.StopAsync();
        await rabbitConsumer.StopAsync(Ct);
        await stop.CancelAsync();
        await Task.WhenAll(kafkaRun, relay1, relay2).WaitAsync(TimeSpan.FromSeconds(30), Ct);

        Assert.Equal((long)orders, await db.RowsAsync(table));
        Assert.Equal((long)orders, await db.AppliedAsync(table));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE applied <> 1"));

        // Duplicates really happened at every hop: 36 Kafka messages for 30 orders, and each relay published its first
        // batch, died before marking it, and published it again.
        Assert.True(crash1.Crashed && crash2.Crashed, "both relays must have republished a batch");
        Assert.True(rabbitConsumer.AcknowledgedCount > orders, $"RabbitMQ acknowledged {rabbitConsumer.AcknowledgedCount}: the republished copies must have arrived too");
        Assert.Equal((long)orders, await db.ScalarAsync<long>($"SELECT count(*) FROM {kafkaStore.QualifiedOutboxTableName}"));
        Assert.Equal((long)orders, await db.ScalarAsync<long>($"SELECT count(*) FROM {rabbitStore.QualifiedOutboxTableName}"));
    }

    private Task<long> Pending(PostgresIdempotencyStore store) => db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL");

    private static IIdempotentMessageHandler Forward(string destination) => IdempotentHandler.Create((context, _) =>
    {
        var id = JsonDocument.Parse(context.Body).RootElement.GetProperty("id").GetString()!;
        context.AddOutgoing(new OutboxMessage(destination, id, context.Body));
        return ValueTask.CompletedTask;
    });

    private static KafkaIdempotencyOptions<byte[], byte[]> KafkaOptions(string topic)
    {
        var options = new KafkaIdempotencyOptions<byte[], byte[]> { CommitInterval = TimeSpan.FromMilliseconds(200), PollTimeout = TimeSpan.FromMilliseconds(50), ShutdownTimeout = TimeSpan.FromSeconds(5) };
        options.Topics.Add(topic);
        return options;
    }

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
        private int _calls;

        public bool Crashed => Volatile.Read(ref _calls) > 1;

        public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            await inner.PublishAsync(messages, cancellationToken);
            Interlocked.Increment(ref _calls);
            if (Interlocked.Decrement(ref _left) >= 0)
            {
                throw new InvalidOperationException("relay died after publishing, before marking sent");
            }
        }
    }
}
