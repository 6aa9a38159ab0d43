using Idempotency.TestSupport;
using Microsoft.Extensions.Time.Testing;

namespace Idempotency.RabbitMQ.Tests;

/// <summary>The consumer contract the three adapters share, on RabbitMQ: the lifecycle and the clock.</summary>
public sealed class ConsumerContractTests(PostgresFixture db, RabbitMqFixture mq) : IClassFixture<PostgresFixture>, IClassFixture<RabbitMqFixture>
{
    [Fact]
    public async Task RunAsync_consumes_until_cancelled_then_stops_and_completes()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "run");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 30).Select(i => ((string?)$"r-{i}", Harness.Body($"r-{i}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("run");
        var processor = h.Processor(h.Credit());
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, processor, h.Options(), cancellationToken: TestContext.Current.CancellationToken);
        using var run = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);

        var running = consumer.RunAsync(run.Token);
        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 30 && consumer.AcknowledgedCount == 30, 60, "30 applied and acknowledged");
        Assert.False(consumer.Completion.IsCompleted);
        await run.CancelAsync();
        await running.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);

        IIdempotentConsumer contract = consumer;
        Assert.True(contract.Completion.IsCompletedSuccessfully);
        Assert.Equal("rabbitmq:orders", contract.Name);
        Assert.Same(processor, contract.Processor);
        Assert.Equal(0u, await mq.ConsumerCountAsync(h.Queue));
        Assert.Equal(30L, await h.AppliedAsync());
    }

    [Fact]
    public async Task The_retry_delay_runs_on_the_given_clock()
    {
        var h = await Harness.CreateAsync(db, mq, prefix: "clock");
        await mq.PublishManyAsync(h.Queue, Enumerable.Range(0, 6).Select(i => ((string?)(i == 3 ? "poison" : $"c-{i}"), Harness.Body($"c-{i}"))).ToList());
        await using var connection = await mq.CreateConnectionAsync("clock");
        var poisonRuns = 0;
        var handler = h.Credit(fail: context => context.Key == "poison" && Interlocked.Increment(ref poisonRuns) > 0);
        var options = Harness.HandlerOptions(maxAttempts: 2);
        options.Retry = new RetryOptions { MaxAttempts = 2, InitialDelay = TimeSpan.FromMinutes(1), MaxDelay = TimeSpan.FromMinutes(1) };
        var time = new FakeTimeProvider();
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, h.Processor(handler, options), h.Options(concurrency: 2), timeProvider: time, cancellationToken: TestContext.Current.CancellationToken);
        await consumer.StartAsync(TestContext.Current.CancellationToken);

        await Harness.WaitUntilAsync(async () => await h.RowsAsync() == 5 && Volatile.Read(ref poisonRuns) == 1, 60, "5 applied and the poison tried once");

        // A minute's retry delay on a clock that does not move: the delivery is held, not requeued, however long we wait.
        await Task.Delay(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken);
        Assert.Equal((1, 0L, 0L), (Volatile.Read(ref poisonRuns), consumer.RequeuedCount, consumer.DeadLetteredCount));

        time.Advance(TimeSpan.FromMinutes(2));
        await Harness.WaitUntilAsync(() => consumer.DeadLetteredCount == 1, 60, "the poison requeued, tried again and dead-lettered");
        await consumer.StopAsync(TestContext.Current.CancellationToken);

        Assert.Equal(2, poisonRuns);
        Assert.Equal(1L, consumer.RequeuedCount);
        Assert.Equal(1u, await h.DeadLetteredAsync());
        Assert.Equal(5L, await h.AppliedAsync());
    }
}
