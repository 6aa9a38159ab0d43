using System.Collections.Concurrent;
using Idempotency.Delivery;
using Idempotency.TestSupport;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>An <see cref="IDeliveryObserver"/> registered in the container is told about every message the consumer decided, with its outcome.</summary>
public sealed class ObserverTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task A_registered_observer_sees_every_settled_message_with_its_outcome()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "observer");
        var keys = Enumerable.Range(0, 30).Select(i => $"o-{i}").Concat(Enumerable.Range(0, 10).Select(i => $"o-{i}")).Append("poison");
        await mq.PublishManyAsync(h.Queue, keys.Select(k => ((string?)k, Harness.Body(k))).ToList());
        await using var connection = await mq.CreateConnectionAsync("observer");
        var observer = new RecordingObserver();

        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton(connection);
        builder.Services.AddSingleton<IDeliveryObserver>(observer);
        builder.Services.AddSingleton(new PoisonHandler.Inner(h.Credit(fail: context => context.Key == "poison")));
        builder.Services.AddIdempotency()
            .UseStore(_ => h.Store)
            .ConfigureHandler("obs-orders", o => o.Retry = new RetryOptions { MaxAttempts = 2, InitialDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(50) })
            .AddRabbitMqConsumer<PoisonHandler>("obs-orders", o => h.Topology.ApplyTo(o));
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        await Harness.WaitUntilAsync(() => observer.All.Count(o => o.Settled) == 41, 60, "41 messages settled");
        await host.StopAsync(TestContext.Current.CancellationToken);

        var seen = observer.All.ToList();
        Assert.All(seen, o => Assert.Equal(("rabbitmq", h.Queue, "obs-orders"), (o.Broker, o.Destination, o.Handler)));
        Assert.Equal(30, seen.Count(o => o is { Outcome: ProcessingOutcome.Processed, Action: DeliveryAction.Acknowledge, Settled: true }));
        Assert.Equal(10, seen.Count(o => o is { Outcome: ProcessingOutcome.Duplicate, Action: DeliveryAction.Acknowledge, Settled: true }));
        var retry = Assert.Single(seen, o => o.Action == DeliveryAction.Retry);
        Assert.Equal(("poison", false, 1), (retry.Key, retry.Settled, retry.Attempt));
        var dead = Assert.Single(seen, o => o.Action == DeliveryAction.DeadLetter);
        Assert.Equal(("poison", true, 2, "handler_failed"), (dead.Key, dead.Settled, dead.Attempt, dead.ReasonCode));
        Assert.IsType<InvalidOperationException>(dead.Error);
        Assert.Equal(42, seen.Count);
        Assert.Equal(30L, await h.AppliedAsync());
        Assert.Equal(1u, await h.DeadLetteredAsync());
    }

    private sealed class RecordingObserver : IDeliveryObserver
    {
        public ConcurrentQueue<DeliveryObservation> All { get; } = new();

        public void OnDelivered(DeliveryObservation delivery) => All.Enqueue(delivery);
    }

    private sealed class PoisonHandler(PoisonHandler.Inner inner) : IIdempotentMessageHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => inner.Handler.HandleAsync(context, cancellationToken);

        public sealed record Inner(IIdempotentMessageHandler Handler);
    }
}
