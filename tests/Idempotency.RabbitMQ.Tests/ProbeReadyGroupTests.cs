using System.Collections.Concurrent;
using System.Text;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// Default options (natural batching): deliveries waiting in the prefetch buffer behind a slow first one share one store
/// transaction. A gate message holds the worker until every other delivery is buffered, so the rest is one ready group.
/// </summary>
public sealed class ProbeReadyGroupTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    private static RabbitMqIdempotencyOptions Defaults(Harness h) =>
        h.Topology.ApplyTo(new RabbitMqIdempotencyOptions { ShutdownTimeout = TimeSpan.FromSeconds(20) });

    private sealed class Recorder : IDeliveryObserver
    {
        public ConcurrentQueue<(DeliveryObservation Observation, int RunsOfKey)> Seen { get; } = new();

        public Func<string?, int> Runs { get; set; } = _ => 0;

        public void OnDelivered(DeliveryObservation observation) => Seen.Enqueue((observation, Runs(observation.Key)));
    }

    [Fact]
    public async Task A_mixed_ready_group_settles_each_delivery_as_documented()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "probe-mixed");
        IdempotentRabbitMqConsumer? consumer = null;
        var entered = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var handler = h.Credit(before: async (context, ct) =>
        {
            entered.AddOrUpdate(context.Key, 1, (_, n) => n + 1);
            if (context.Key == "gate")
            {
                // Hold the worker until the other 9 deliveries wait in the buffer behind this one.
                await Harness.WaitUntilAsync(() => consumer is { PendingCount: >= 10 }, 30, "the rest buffered");
            }
        });
        var options = Harness.HandlerOptions(maxAttempts: 3);
        options.PayloadMismatchPolicy = PayloadMismatchPolicy.Quarantine;
        options.MaxKeyBytes = 100; // an AMQP message id holds 255 bytes at most: a 200-byte key is the oversized one

        await mq.PublishAsync(h.Queue, "gate", Harness.Body("gate"));
        await mq.PublishAsync(h.Queue, "a", Harness.Body("a"));
        await mq.PublishAsync(h.Queue, "dup", Harness.Body("dup"));
        await mq.PublishAsync(h.Queue, null, Harness.Body("nokey"));
        await mq.PublishAsync(h.Queue, "mis", Encoding.UTF8.GetBytes("{\"key\":\"mis\",\"amount\":1}"));
        await mq.PublishAsync(h.Queue, "dup", Harness.Body("dup"));
        await mq.PublishAsync(h.Queue, new string('x', 200), Harness.Body("long"));
        await mq.PublishAsync(h.Queue, "mis", Encoding.UTF8.GetBytes("{\"key\":\"mis\",\"amount\":2}"));
        await mq.PublishAsync(h.Queue, "b", Harness.Body("b"));
        await mq.PublishAsync(h.Queue, "c", Harness.Body("c"));

        await using var connection = await mq.CreateConnectionAsync("probe-mixed");
        consumer = await h.StartAsync(connection, h.Processor(handler, options), Defaults(h));
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 6 && await h.DeadLetteredAsync() == 3 && await h.ReadyAsync() == 0 && consumer.PendingCount == 0, 60, "6 applied, 3 dead-lettered");
        await Task.Delay(500, TestContext.Current.CancellationToken);
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(6L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
        var dead = await mq.DrainAsync(h.Topology.DeadLetterQueue);
        Assert.Equal(3, dead.Count);
        var reasons = dead.Select(d => Encoding.UTF8.GetString((byte[])d.BasicProperties.Headers!["x-idempotency-reason"]!)).Order().ToList();
        Assert.Equal(["invalid_key", "invalid_key", "payload_mismatch"], reasons);
        var mismatch = dead.Single(d => d.BasicProperties.MessageId == "mis");
        Assert.Contains("\"amount\":2", Encoding.UTF8.GetString(mismatch.Body.Span));
        Assert.Equal(1, entered["dup"]);
        Assert.Equal(1, entered["mis"]);
        Assert.Equal(7L, consumer.AcknowledgedCount);
        Assert.Equal(3L, consumer.DeadLetteredCount);
    }

    [Fact]
    public async Task A_poison_key_sent_twice_in_one_ready_group_runs_its_handler_max_attempts_times_before_it_is_dead_lettered()
    {
        // Repro: the copy of a poison key that follows the first copy inside a batch never runs its handler, yet it
        // takes the first copy's Failed result and spends an attempt under the same attempt id (the key): the poison
        // message is dead-lettered after MaxAttempts - 1 handler runs.
        const int MaxAttempts = 3;
        var h = await Harness.CreateAsync(db, mq, prefix: "probe-poison2");
        IdempotentRabbitMqConsumer? consumer = null;
        var runs = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        var handler = h.Credit(
            fail: context => context.Key == "poison",
            before: async (context, ct) =>
            {
                runs.AddOrUpdate(context.Key, 1, (_, n) => n + 1);
                if (context.Key == "gate")
                {
                    await Harness.WaitUntilAsync(() => consumer is { PendingCount: >= 5 }, 30, "the rest buffered");
                }
            });
        var recorder = new Recorder { Runs = key => key is null ? 0 : runs.GetValueOrDefault(key) };
        var options = Defaults(h);
        options.Observers.Add(recorder);

        await mq.PublishAsync(h.Queue, "gate", Harness.Body("gate"));
        await mq.PublishAsync(h.Queue, "poison", Harness.Body("poison"));
        await mq.PublishAsync(h.Queue, "a", Harness.Body("a"));
        await mq.PublishAsync(h.Queue, "poison", Harness.Body("poison"));
        await mq.PublishAsync(h.Queue, "b", Harness.Body("b"));

        await using var connection = await mq.CreateConnectionAsync("probe-poison2");
        consumer = await h.StartAsync(connection, h.Processor(handler, Harness.HandlerOptions(maxAttempts: MaxAttempts)), options);
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 3 && await h.DeadLetteredAsync() == 2 && await h.ReadyAsync() == 0 && consumer.PendingCount == 0, 60, "3 applied, both poison copies dead-lettered");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(3L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        var firstDeadLetter = recorder.Seen.First(s => s.Observation.Action == DeliveryAction.DeadLetter);
        Assert.True(
            firstDeadLetter.RunsOfKey >= MaxAttempts,
            $"dead-lettered after {firstDeadLetter.RunsOfKey} handler runs (attempt {firstDeadLetter.Observation.Attempt}); MaxAttempts is {MaxAttempts}. Decisions: "
            + string.Join(", ", recorder.Seen.Where(s => s.Observation.Key == "poison").Select(s => $"{s.Observation.Action}@{s.Observation.Attempt}/runs {s.RunsOfKey}")));
    }
    [Theory]
    [InlineData("k-3", false)]
    [InlineData("k-7", true)]
    public async Task A_store_connection_killed_in_the_middle_of_a_ready_group_spends_no_attempt_and_applies_each_once(string victim, bool afterWrite)
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "probe-kill");
        IdempotentRabbitMqConsumer? consumer = null;
        var killed = 0;
        var gated = 0;
        async Task KillAsync(MessageContext context)
        {
            var pid = context.GetNpgsqlConnection().ProcessID;
            await using var admin = await db.DataSource.OpenConnectionAsync();
            await using var command = admin.CreateCommand();
            command.CommandText = $"SELECT pg_terminate_backend({pid})";
            await command.ExecuteScalarAsync();
        }

        var handler = h.Credit(
            before: async (context, ct) =>
            {
                if (context.Key == "gate" && Interlocked.Exchange(ref gated, 1) == 0)
                {
                    // Only once: redelivered after the kill, the gate is processed like any other message.
                    await Harness.WaitUntilAsync(() => consumer is { PendingCount: >= 9 }, 30, "the rest buffered");
                }

                if (!afterWrite && context.Key == victim && Interlocked.Exchange(ref killed, 1) == 0)
                {
                    await KillAsync(context);
                }
            },
            afterWrite: context =>
            {
                if (afterWrite && context.Key == victim && Interlocked.Exchange(ref killed, 1) == 0)
                {
                    // The last handler of the group wrote; the commit goes out on a dead connection.
                    KillAsync(context).GetAwaiter().GetResult();
                }
            });
        var recorder = new Recorder();
        var options = Defaults(h);
        options.Observers.Add(recorder);
        await mq.PublishManyAsync(h.Queue, new[] { "gate" }.Concat(Enumerable.Range(0, 8).Select(i => $"k-{i}")).Select(k => ((string?)k, Harness.Body(k))).ToList());

        await using var connection = await mq.CreateConnectionAsync("probe-kill");
        consumer = await h.StartAsync(connection, h.Processor(handler, Harness.HandlerOptions(maxAttempts: 1)), options);
        try
        {
            await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 9 && await h.ReadyAsync() == 0 && consumer.PendingCount == 0, 90, "all 9 applied");
        }
        catch (TimeoutException timeout)
        {
            throw new TimeoutException(
                $"{timeout.Message}: rows {await h.RowsAsync()}, ready {await h.ReadyAsync()}, consumers {await mq.ConsumerCountAsync(h.Queue)}, pending {consumer.PendingCount}, paused {consumer.IsPaused}, acked {consumer.AcknowledgedCount}, requeued {consumer.RequeuedCount}; decisions: "
                + string.Join(", ", recorder.Seen.Select(s => $"{s.Observation.Key}:{s.Observation.Outcome}/{s.Observation.Action}/{s.Observation.Settled}")));
        }

        await Task.Delay(500, TestContext.Current.CancellationToken);
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(1, killed);
        Assert.Equal(9L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(0L, consumer.DeadLetteredCount);
        Assert.DoesNotContain(recorder.Seen, s => s.Observation.Action is DeliveryAction.Retry or DeliveryAction.DeadLetter);
        Assert.Contains(recorder.Seen, s => s.Observation.Outcome == ProcessingOutcome.StoreUnavailable);
        Assert.Equal(9, recorder.Seen.Count(s => s.Observation.Action == DeliveryAction.Acknowledge && s.Observation.Settled));
    }
}
