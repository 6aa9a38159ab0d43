using System.Collections.Concurrent;
using System.Text;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>
/// <see cref="RabbitMqIdempotentStep"/> inside a consume callback the team keeps: a hand-written
/// <see cref="AsyncEventingBasicConsumer"/> whose only change is the step's two calls.
/// </summary>
public sealed class StepTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task Duplicates_are_acknowledged_without_a_second_effect()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "step-dup");
        var keys = Enumerable.Range(0, 50).Select(i => $"s-{i}").Concat(Enumerable.Range(0, 20).Select(i => $"s-{i * 2}"));
        await mq.PublishManyAsync(h.Queue, keys.Select(k => ((string?)k, Harness.Body(k))).ToList());
        await using var connection = await mq.CreateConnectionAsync("step-dup");
        var step = new RabbitMqIdempotentStep(h.Processor(h.Credit()), h.Options());

        await using var loop = await Loop.StartAsync(connection, h.Queue, step);
        await Harness.WaitUntilAsync(() => loop.Results.Count(r => r.Settles) == 70, 60, "70 deliveries settled");
        await loop.StopAsync();

        Assert.Equal(50, loop.Results.Count(r => r.Result.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(20, loop.Results.Count(r => r.Result.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(50L, await h.RowsAsync());
        Assert.Equal(50L, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());
    }

    [Fact]
    public async Task A_failing_handler_is_retried_then_dead_lettered_to_the_queue_with_the_reason_headers()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "step-dlq");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 10).Select(i => ((string?)(i == 5 ? "poison" : $"p-{i}"), Harness.Body($"p-{i}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("step-dlq");
        await using var deadLetterChannel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), TestContext.Current.CancellationToken);
        var poisonRuns = 0;
        var handler = h.Credit(before: (context, _) =>
        {
            if (context.Key == "poison")
            {
                Interlocked.Increment(ref poisonRuns);
            }

            return Task.CompletedTask;
        }, fail: context => context.Key == "poison");
        var step = new RabbitMqIdempotentStep(h.Processor(handler, Harness.HandlerOptions(maxAttempts: 3)), h.Options(), deadLetterChannel);

        await using var loop = await Loop.StartAsync(connection, h.Queue, step);
        await Harness.WaitUntilAsync(async () => await h.DeadLetteredAsync() == 1 && await h.RowsAsync() == 9, 60, "9 applied and the poison dead-lettered");
        await Harness.WaitUntilAsync(() => loop.Results.Count(r => r.Settles) == 10, 30, "10 deliveries settled");
        await loop.StopAsync();

        Assert.Equal(3, poisonRuns);
        Assert.Equal([DeliveryAction.Retry, DeliveryAction.Retry, DeliveryAction.DeadLetter], loop.Results.Where(r => r.Result.Message.Key == "poison").Select(r => r.Action));
        Assert.Equal(9L, await h.AppliedAsync());
        Assert.Equal(0u, await h.ReadyAsync());

        var dead = await mq.Channel.BasicGetAsync(h.Topology.DeadLetterQueue, autoAck: true, TestContext.Current.CancellationToken);
        Assert.NotNull(dead);
        var headers = dead.BasicProperties.Headers!;
        string Header(string name) => Encoding.UTF8.GetString((byte[])headers[name]!);
        Assert.Equal("handler_failed", Header(DeadLetterHeaders.ReasonCode));
        Assert.Equal("3", Header(DeadLetterHeaders.Attempts));
        Assert.Equal("poison", Header(DeadLetterHeaders.Key));
        Assert.Equal(h.Queue, Header(RabbitMqDeadLetterHeaders.SourceQueue));
        Assert.Equal("poison", dead.BasicProperties.MessageId);
        Assert.Equal(Harness.Body("p-5"), dead.Body.ToArray());
    }

    [Fact]
    public async Task A_store_that_is_not_set_up_pauses_the_loop_acknowledges_nothing_and_resumes_once_fixed()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "step-pause");
        const int Messages = 20;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"w-{i}", Harness.Body($"w-{i}"))).ToList());
        var store = new PostgresIdempotencyStore(db.DataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = "step_missing_" + Guid.NewGuid().ToString("N")[..8] });
        await using var connection = await mq.CreateConnectionAsync("step-pause");
        var step = new RabbitMqIdempotentStep(new IdempotentProcessor(store, h.Credit(), Harness.HandlerOptions(maxAttempts: 2)), h.Options());

        await using var loop = await Loop.StartAsync(connection, h.Queue, step);
        await Harness.WaitUntilAsync(() => !step.IsStoreReady, 60, "the step pauses for the store");

        // Far longer than two attempts' worth of retries: nothing acknowledged, dead-lettered or applied; every message still held by the broker.
        await Task.Delay(TimeSpan.FromSeconds(2), TestContext.Current.CancellationToken);
        Assert.DoesNotContain(loop.Results, r => r.Settles);
        Assert.Equal(0, h.Runs);
        Assert.Equal(0u, await h.DeadLetteredAsync());

        await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        await Harness.WaitUntilAsync(async () => loop.Results.Count(r => r.Settles) == Messages && await h.RowsAsync() == Messages, 90, $"{Messages} processed once the schema exists");
        await loop.StopAsync();

        Assert.True(step.IsStoreReady);
        Assert.Contains(loop.Results, r => r.Action == DeliveryAction.PauseAndRetry);
        Assert.Equal(Messages, loop.Results.Count(r => r.Action == DeliveryAction.Acknowledge));
        Assert.Equal(Messages, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(0u, await h.ReadyAsync());
    }

    [Fact]
    public async Task A_store_outage_mid_stream_acknowledges_only_what_committed_and_loses_nothing()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "step-outage");
        const int Messages = 40;
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, Messages).Select(i => ((string?)$"o-{i}", Harness.Body($"o-{i}"))).ToList());
        await using var proxied = db.ConnectThroughProxy();
        var store = new PostgresIdempotencyStore(proxied.DataSource, h.Store.Options);
        var cut = 0;

        // The 10th handler run cuts PostgreSQL after its write, before its commit: that message's effect never commits.
        var handler = h.Credit(afterWrite: _ =>
        {
            if (h.Runs == 10 && Interlocked.Exchange(ref cut, 1) == 0)
            {
                proxied.Proxy.Stop();
                proxied.DataSource.Clear();
            }
        });
        await using var connection = await mq.CreateConnectionAsync("step-outage");
        var step = new RabbitMqIdempotentStep(new IdempotentProcessor(store, handler, Harness.HandlerOptions(maxAttempts: 2)), h.Options());

        await using var loop = await Loop.StartAsync(connection, h.Queue, step);
        await Harness.WaitUntilAsync(() => Volatile.Read(ref cut) == 1 && !step.IsStoreReady, 60, "the outage pauses the step");
        await Task.Delay(TimeSpan.FromSeconds(2), TestContext.Current.CancellationToken);

        // Acknowledged == committed, during the outage: nothing was acked ahead of its commit, nothing dead-lettered.
        var committed = await h.RowsAsync();
        Assert.Equal(committed, loop.Results.Count(r => r.Action == DeliveryAction.Acknowledge));
        Assert.True(committed < Messages);
        Assert.Equal(0u, await h.DeadLetteredAsync());

        proxied.Proxy.Start();
        await Harness.WaitUntilAsync(async () => loop.Results.Count(r => r.Settles) == Messages && await h.RowsAsync() == Messages, 90, $"{Messages} processed after the outage");
        await loop.StopAsync();

        Assert.Equal(Messages, loop.Results.Count(r => r.Action == DeliveryAction.Acknowledge));
        Assert.Contains(loop.Results, r => r.Action == DeliveryAction.PauseAndRetry);
        Assert.Equal(Messages, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal(0u, await h.DeadLetteredAsync());
        Assert.Equal(0u, await h.ReadyAsync());
    }

    /// <summary>
    /// The consume loop a team already has: a channel, a prefetch, an <see cref="AsyncEventingBasicConsumer"/>; the
    /// callback's body is the step's two calls in place of "handle, then ack".
    /// </summary>
    [Fact]
    public async Task A_dead_letter_the_exchange_refuses_is_requeued_not_discarded()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "step-dlx-gone");
        await using var connection = await mq.CreateConnectionAsync("step-dlx-gone");
        await using var deadLetterChannel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), TestContext.Current.CancellationToken);
        var step = new RabbitMqIdempotentStep(h.Processor(h.Credit()), h.Options(), deadLetterChannel);

        // Without the exchange (it is also the queue's own x-dead-letter-exchange) a basic.nack(requeue: false) drops the message.
        await mq.Channel.ExchangeDeleteAsync(h.Topology.DeadLetterExchange, ifUnused: false, cancellationToken: TestContext.Current.CancellationToken);
        await mq.PublishAsync(h.Queue, messageId: null, Harness.Body("no-key"));
        await using (var loop = await Loop.StartAsync(connection, h.Queue, step))
        {
            await Harness.WaitUntilAsync(() => loop.Results.Count(r => r.Action == DeliveryAction.DeadLetter) >= 3, 60, "three refused dead-letters");
            await loop.StopAsync();
        }

        Assert.Equal(1u, await h.ReadyAsync());
    }

    [Fact]
    public async Task A_key_selector_that_throws_makes_the_step_dead_letter_the_message()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "step-selector");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 5).Select(i => ((string?)(i == 1 ? "boom" : $"k-{i}"), Harness.Body($"k-{i}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("step-selector");
        await using var deadLetterChannel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), TestContext.Current.CancellationToken);
        var options = h.Options();
        options.KeySelector = args => args.BasicProperties.MessageId == "boom" ? throw new FormatException("no key in this one") : args.BasicProperties.MessageId;
        var step = new RabbitMqIdempotentStep(h.Processor(h.Credit()), options, deadLetterChannel);

        await using (var loop = await Loop.StartAsync(connection, h.Queue, step))
        {
            await Harness.WaitUntilAsync(() => loop.Results.Count(r => r.Settles) == 5, 60, "5 deliveries settled");
            await loop.StopAsync();
            Assert.Equal(ProcessingOutcome.InvalidKey, Assert.Single(loop.Results, r => r.Action == DeliveryAction.DeadLetter).Result.Outcome);
        }

        Assert.Equal(4L, await h.RowsAsync());
        var dead = Assert.Single(await mq.DrainAsync(h.Topology.DeadLetterQueue));
        Assert.Equal("boom", dead.BasicProperties.MessageId);
    }

    private sealed class Loop : IAsyncDisposable
    {
        private readonly CancellationTokenSource _stopping = new();
        private IChannel _channel = null!;
        private string _tag = string.Empty;

        public ConcurrentQueue<StepResult> Results { get; } = new();

        public static async Task<Loop> StartAsync(IConnection connection, string queue, RabbitMqIdempotentStep step)
        {
            var loop = new Loop();
            var channel = await connection.CreateChannelAsync();
            await channel.BasicQosAsync(0, 20, global: false);
            var consumer = new AsyncEventingBasicConsumer(channel);
            consumer.ReceivedAsync += async (_, delivery) =>
            {
                var result = await step.RunAsync(delivery, loop._stopping.Token);
                await step.CompleteAsync(channel, delivery, result, loop._stopping.Token);
                loop.Results.Enqueue(result);
            };
            loop._channel = channel;
            loop._tag = await channel.BasicConsumeAsync(queue, autoAck: false, consumer);
            return loop;
        }

        public async Task StopAsync()
        {
            if (_channel.IsOpen)
            {
                await _stopping.CancelAsync();
                await _channel.BasicCancelAsync(_tag);
                await _channel.CloseAsync();
            }
        }

        public async ValueTask DisposeAsync()
        {
            await StopAsync();
            await _channel.DisposeAsync();
            _stopping.Dispose();
        }
    }
}
