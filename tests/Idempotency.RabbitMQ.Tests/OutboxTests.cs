using System.Globalization;
using System.Text;
using Dapper;
using Idempotency.Outbox;
using Idempotency.Postgres;
using Idempotency.Postgres.Outbox;
using Idempotency.RabbitMQ.Outbox;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>The PostgreSQL outbox relayed to RabbitMQ with <see cref="RabbitMqOutboxPublisher"/>, consumed downstream by the RabbitMQ adapter.</summary>
public sealed class OutboxTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Relay_dying_after_confirms_republishes_and_the_downstream_consumer_applies_each_message_once()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "outbox");
        var upstreamStore = await db.CreateStoreAsync();
        await Upstream(upstreamStore, h.Queue).ProcessBatchAsync(Enumerable.Range(0, 40).Select(i => Incoming("order-" + i)).ToList(), Ct);

        await using var connection = await mq.CreateConnectionAsync("outbox-relay");
        await using var publisher = new RabbitMqOutboxPublisher(connection);
        var relay = new PostgresOutboxRelay(upstreamStore, new CrashAfterPublish(publisher, crashes: 1));
        await Assert.ThrowsAsync<InvalidOperationException>(() => relay.RelayOnceAsync(Ct));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {upstreamStore.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL"));
        Assert.Equal(40, await relay.RelayOnceAsync(Ct));
        Assert.Equal(80u, await h.ReadyAsync());

        await using var consumerConnection = await mq.CreateConnectionAsync("outbox-downstream");
        var consumer = await h.StartAsync(consumerConnection, h.Processor(h.Credit()), h.Options());
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == 80, 30, "80 deliveries acknowledged");
        await consumer.StopAsync(Ct);

        Assert.Equal(40, h.Runs);
        Assert.Equal(40L, await h.RowsAsync());
        Assert.Equal(40L, await h.AppliedAsync());
        var ids = await db.ScalarAsync<long>($"SELECT count(*) FROM {h.Table} t JOIN {upstreamStore.QualifiedOutboxTableName} o ON o.message_id::text = t.id");
        Assert.Equal(40L, ids);
    }

    [Fact]
    public async Task Relay_process_SIGKILLed_after_publishing_a_batch_before_marking_it_sent_republishes_it_on_restart_and_downstream_applies_each_row_once()
    {
        const int rows = 60;
        const int batch = 20;
        var h = await Harness.CreateAsync(db, mq, prefix: "outbox-kill");
        var upstreamStore = await db.CreateStoreAsync();
        await Upstream(upstreamStore, h.Queue).ProcessBatchAsync(Enumerable.Range(0, rows).Select(i => Incoming("order-" + i)).ToList(), Ct);
        string[] relayArgs = ["relay", mq.Uri.ToString(), db.ConnectionString, db.Schema, upstreamStore.Options.Table, upstreamStore.Options.OutboxTable, batch.ToString(CultureInfo.InvariantCulture)];

        // First relay process: batch 1 is published and marked; batch 2 is published (broker confirmed) and the host
        // blocks before marking it, announcing "holding 20". It is killed right there.
        using (var first = ChildHost.Start("Idempotency.RabbitMQ.Tests", "Idempotency.RabbitMQ.TestHost", relayArgs, new Dictionary<string, string> { ["IDEMPOTENCY_TESTHOST_HOLD_AFTER_PUBLISH"] = "2" }))
        {
            await first.WaitForLineAsync($"holding {batch}", TimeSpan.FromSeconds(60));
            Assert.Equal(2L * batch, await h.ReadyAsync());
            Assert.Equal((long)rows - batch, await PendingAsync(upstreamStore));
            first.Kill();
        }

        // The kill rolled back the open relay transaction: batch 2 is in the queue but still unsent in the outbox.
        Assert.Equal((long)rows - batch, await PendingAsync(upstreamStore));
        Assert.Equal(2u * batch, await h.ReadyAsync());

        // Restarted relay: publishes batch 2 again, then batch 3, and marks everything sent.
        using (var second = ChildHost.Start("Idempotency.RabbitMQ.Tests", "Idempotency.RabbitMQ.TestHost", relayArgs))
        {
            await Harness.WaitUntilAsync(async () => await PendingAsync(upstreamStore) == 0, 60, "every outbox row marked sent after the restart");
            await second.StopAsync(TimeSpan.FromSeconds(15));
        }

        // The broker really got the duplicate batch: this count is what proves the kill fell between publish and mark.
        Assert.Equal((uint)(rows + batch), await h.ReadyAsync());

        await using var consumerConnection = await mq.CreateConnectionAsync("outbox-kill-downstream");
        var consumer = await h.StartAsync(consumerConnection, h.Processor(h.Credit()), h.Options());
        await Harness.WaitUntilAsync(() => consumer.AcknowledgedCount == rows + batch, 30, $"{rows + batch} deliveries acknowledged");
        await consumer.StopAsync(Ct);

        Assert.Equal(rows, h.Runs);
        Assert.Equal(rows, await h.RowsAsync());
        Assert.Equal(rows, await h.AppliedAsync());
        Assert.Equal(1L, await h.MaxAppliedAsync());
        Assert.Equal((long)rows, await db.ScalarAsync<long>($"SELECT count(DISTINCT message_id) FROM {upstreamStore.QualifiedOutboxTableName}"));
        Assert.Equal((long)rows, await db.ScalarAsync<long>($"SELECT count(*) FROM {h.Table} t JOIN {upstreamStore.QualifiedOutboxTableName} o ON o.message_id::text = t.id"));
    }

    [Fact]
    public async Task AddPostgresOutboxRelay_in_a_host_is_woken_by_commits_publishes_each_row_and_marks_it_sent()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "outbox-di");
        var upstreamStore = await db.CreateStoreAsync();
        await using var connection = await mq.CreateConnectionAsync("outbox-di-relay");
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UsePostgres(o =>
            {
                o.ConnectionString = db.ConnectionString;
                o.Schema = db.Schema;
                o.Table = upstreamStore.Options.Table;
                o.OutboxTable = upstreamStore.Options.OutboxTable;
            })
            .AddPostgresOutboxRelay(_ => new RabbitMqOutboxPublisher(connection), o => o.PollInterval = TimeSpan.FromMinutes(5));
        using var host = builder.Build();
        await host.StartAsync(Ct);

        // Written after the relay started, through the host's own store: with a 5-minute poll interval only the commit's
        // NOTIFY can wake the relay in time.
        await Upstream(host.Services.GetRequiredService<PostgresIdempotencyStore>(), h.Queue)
            .ProcessBatchAsync(Enumerable.Range(0, 30).Select(i => Incoming("di-order-" + i)).ToList(), Ct);
        await Harness.WaitUntilAsync(async () => await PendingAsync(upstreamStore) == 0, 20, "30 outbox rows marked sent");
        await host.StopAsync(Ct);

        Assert.Equal(30L, await db.ScalarAsync<long>($"SELECT count(*) FROM {upstreamStore.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL"));
        var published = (await mq.DrainAsync(h.Queue)).Select(m => m.BasicProperties.MessageId!).Order().ToList();
        await using var read = await db.DataSource.OpenConnectionAsync(Ct);
        var rows = (await read.QueryAsync<Guid>($"SELECT message_id FROM {upstreamStore.QualifiedOutboxTableName}")).Select(g => g.ToString()).Order().ToList();
        Assert.Equal(30, rows.Count);
        Assert.Equal(rows, published);
    }

    [Fact]
    public async Task Broker_cut_mid_run_marks_nothing_sent_early_and_everything_arrives_once_after()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "outbox-cut");
        var upstreamStore = await db.CreateStoreAsync();
        var upstream = Upstream(upstreamStore, h.Queue);
        await using var proxy = new TcpProxy(mq.Uri.Host, mq.Uri.Port);
        proxy.Start();
        await using var connection = await mq.CreateConnectionAsync("outbox-relay-proxied", proxy.Port);
        await using var publisher = new RabbitMqOutboxPublisher(connection, new RabbitMqOutboxPublisherOptions { ConfirmTimeout = TimeSpan.FromSeconds(2) });
        var relay = new PostgresOutboxRelay(upstreamStore, publisher, new PostgresOutboxRelayOptions
        {
            BatchSize = 10,
            PollInterval = TimeSpan.FromMilliseconds(200),
            FailureBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(400) },
        });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var run = relay.RunAsync(stop.Token);

        await upstream.ProcessBatchAsync(Enumerable.Range(0, 20).Select(i => Incoming("before-" + i)).ToList(), Ct);
        await Harness.WaitUntilAsync(async () => await PendingAsync(upstreamStore) == 0, 30, "rows before the cut sent");

        proxy.Stop();
        await upstream.ProcessBatchAsync(Enumerable.Range(0, 30).Select(i => Incoming("during-" + i)).ToList(), Ct);
        await Task.Delay(1500, Ct);
        Assert.Equal(30L, await PendingAsync(upstreamStore));

        proxy.Start();
        await Harness.WaitUntilAsync(async () => await PendingAsync(upstreamStore) == 0, 60, "rows written during the cut sent after it");
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);

        await using var consumerConnection = await mq.CreateConnectionAsync("outbox-cut-downstream");
        var consumer = await h.StartAsync(consumerConnection, h.Processor(h.Credit()), h.Options());
        await Harness.WaitUntilAsync(async () => await h.ReadyAsync() == 0 && await h.RowsAsync() == 50, 30, "50 effects and an empty queue");
        await consumer.StopAsync(Ct);
        Assert.Equal(50L, await h.AppliedAsync());
    }

    [Fact]
    public async Task Unroutable_destination_fails_the_batch_and_marks_nothing_sent()
    {
        var upstreamStore = await db.CreateStoreAsync();
        await Upstream(upstreamStore, "no-such-queue-" + Guid.NewGuid().ToString("N")).ProcessBatchAsync([Incoming("lost?")], Ct);
        await using var connection = await mq.CreateConnectionAsync("outbox-unroutable");
        await using var publisher = new RabbitMqOutboxPublisher(connection);
        var relay = new PostgresOutboxRelay(upstreamStore, publisher);

        var error = await Assert.ThrowsAsync<RabbitMqOutboxPublishException>(() => relay.RelayOnceAsync(Ct));
        Assert.Contains("unroutable", error.Message);
        Assert.Equal(1L, await PendingAsync(upstreamStore));
    }

    [Fact]
    public void Destination_maps_to_exchange_and_routing_key()
    {
        OutboxRecord Record(string destination) => new(1, Guid.NewGuid(), destination, "k", Array.Empty<byte>(), null, DateTimeOffset.UnixEpoch);
        Assert.Equal(new RabbitMqRoute(string.Empty, "orders"), RabbitMqRoute.FromDestination(Record("orders")));
        Assert.Equal(new RabbitMqRoute("events", "order.accepted"), RabbitMqRoute.FromDestination(Record("events/order.accepted")));
        Assert.Equal(new RabbitMqRoute("events", string.Empty), RabbitMqRoute.FromDestination(Record("events/")));
    }

    private static IncomingMessage Incoming(string key) => new(key, Encoding.UTF8.GetBytes($"{{\"key\":\"{key}\",\"amount\":5}}"));

    private static IdempotentProcessor Upstream(PostgresIdempotencyStore store, string destination) =>
        new(store, IdempotentHandler.Create((context, _) =>
        {
            context.AddOutgoing(new OutboxMessage(destination, context.Key, context.Body));
            return ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = "upstream", Retry = new RetryOptions { MaxAttempts = 1 } });

    private Task<long> PendingAsync(PostgresIdempotencyStore store) => db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL");

}
