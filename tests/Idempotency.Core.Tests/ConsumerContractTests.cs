using System.Collections.Concurrent;
using Idempotency.Delivery;
using Idempotency.InMemory;
using Idempotency.Storage;
using Idempotency.Testing;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

/// <summary>
/// The consumer contract every adapter shares: the step for loops users keep, the observer hook, the registration
/// semantics (one call per consumer, configuration binding, the handler-name check) and the shared options.
/// </summary>
public sealed class ConsumerContractTests
{
    [Fact]
    public async Task Step_acknowledges_a_new_message_once_and_a_redelivery_as_duplicate()
    {
        var effects = new ConcurrentDictionary<string, int>();
        var store = new InMemoryIdempotencyStore();
        var processor = new IdempotentProcessor(store, Counting(effects), Options());
        var step = new IdempotentStep(processor, "test", "orders");

        var first = await step.RunAsync(Create("k1"), "m1", cancellationToken: TestContext.Current.CancellationToken);
        var again = await step.RunAsync(Create("k1"), "m1", cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal(DeliveryAction.Acknowledge, first.Action);
        Assert.Equal(ProcessingOutcome.Processed, first.Result.Outcome);
        Assert.Equal(DeliveryAction.Acknowledge, again.Action);
        Assert.Equal(ProcessingOutcome.Duplicate, again.Result.Outcome);
        Assert.True(first.Settles);
        Assert.Equal(1, effects["k1"]);
    }

    [Fact]
    public async Task Step_on_a_queue_returns_retries_with_growing_attempts_then_a_dead_letter_with_headers()
    {
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 3, InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(1) };
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => throw new InvalidOperationException("poison")), options);
        var step = new IdempotentStep(processor, "test", "orders");

        var results = new List<StepResult>();
        for (var i = 0; i < 3; i++)
        {
            results.Add(await step.RunAsync(Create("k"), "m", cancellationToken: TestContext.Current.CancellationToken));
        }

        Assert.Equal([DeliveryAction.Retry, DeliveryAction.Retry, DeliveryAction.DeadLetter], results.Select(r => r.Action));
        Assert.Equal([1, 2, 3], results.Select(r => r.Attempt));
        Assert.True(results[0].Delay > TimeSpan.Zero);
        Assert.Null(results[0].DeadLetterHeaders);
        var headers = results[2].DeadLetterHeaders!;
        Assert.Equal("handler_failed", headers[DeadLetterHeaders.ReasonCode]);
        Assert.Equal("3", headers[DeadLetterHeaders.Attempts]);
        Assert.Equal("k", headers[DeadLetterHeaders.Key]);
    }

    [Fact]
    public async Task Step_in_place_waits_out_retries_itself_and_returns_only_a_settling_action()
    {
        var calls = 0;
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 5, InitialDelay = TimeSpan.FromMilliseconds(1), MaxDelay = TimeSpan.FromMilliseconds(5) };
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) =>
            Interlocked.Increment(ref calls) < 3 ? throw new TimeoutException("downstream") : ValueTask.CompletedTask), options);
        var step = new IdempotentStep(processor, "kafka", "orders", retriesInPlace: true);

        var result = await step.RunAsync(Create("k"), "orders-0@7", cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal(DeliveryAction.Acknowledge, result.Action);
        Assert.Equal(ProcessingOutcome.Processed, result.Result.Outcome);
        Assert.Equal(3, calls);
        Assert.Equal(3, result.Attempt);
    }

    [Fact]
    public async Task Step_pauses_on_a_store_outage_without_spending_an_attempt_and_says_when_the_store_is_back()
    {
        var store = new ScriptedStore { FailAt = StorePhase.Begin, Failure = new ScriptedStoreException(StoreFailureKind.Outage), PingFails = true };
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 1 };
        options.StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(10), MaxDelay = TimeSpan.FromMilliseconds(20) };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options);
        var step = new IdempotentStep(processor, "test", "orders");

        var paused = await step.RunAsync(Create("k"), "m", cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal(DeliveryAction.PauseAndRetry, paused.Action);
        Assert.False(paused.Settles);
        Assert.False(step.IsStoreReady);
        Assert.False(paused.StoreReady.IsCompleted);
        store.FailAt = StorePhase.None;
        store.PingFails = false;
        await paused.StoreReady.WaitAsync(TimeSpan.FromSeconds(60), TestContext.Current.CancellationToken);
        Assert.True(step.IsStoreReady);

        // MaxAttempts is 1: had the outage spent the attempt, this would be dead-lettered.
        var after = await step.RunAsync(Create("k"), "m", cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(DeliveryAction.Acknowledge, after.Action);
        Assert.Equal(1, after.Attempt);
    }

    [Fact]
    public async Task Observers_see_every_decision_and_a_throwing_observer_changes_nothing()
    {
        var seen = new RecordingObserver();
        var options = Options();
        options.Retry = new RetryOptions { MaxAttempts = 1 };
        var fail = true;
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => fail ? throw new InvalidOperationException("x") : ValueTask.CompletedTask), options);
        var step = new IdempotentStep(processor, "test", "orders", observers: [new ThrowingObserver(), seen]);

        var dead = await step.RunAsync(Create("bad"), "m1", cancellationToken: TestContext.Current.CancellationToken);
        fail = false;
        var ok = await step.RunAsync(Create("good"), "m2", cancellationToken: TestContext.Current.CancellationToken);
        var dup = await step.RunAsync(Create("good"), "m3", cancellationToken: TestContext.Current.CancellationToken);

        Assert.Equal([DeliveryAction.DeadLetter, DeliveryAction.Acknowledge, DeliveryAction.Acknowledge], new[] { dead.Action, ok.Action, dup.Action });
        var observed = seen.Observations.ToArray();
        Assert.Equal(3, observed.Length);
        Assert.Equal(("bad", ProcessingOutcome.Failed, DeliveryAction.DeadLetter, "handler_failed"), (observed[0].Key, observed[0].Outcome, observed[0].Action, observed[0].ReasonCode));
        Assert.IsType<InvalidOperationException>(observed[0].Error);
        Assert.Equal(("good", ProcessingOutcome.Processed), (observed[1].Key, observed[1].Outcome));
        Assert.Equal(("good", ProcessingOutcome.Duplicate), (observed[2].Key, observed[2].Outcome));
        Assert.All(observed, o => Assert.True(o.Settled));
        Assert.All(observed, o => Assert.Equal(("test", "orders", "h"), (o.Broker, o.Destination, o.Handler)));
    }

    [Fact]
    public void Shared_options_name_the_bad_setting()
    {
        var options = new SampleConsumerOptions { Concurrency = 0, BatchSize = 0, BatchMaxWait = TimeSpan.FromMinutes(1), MaxTrackedMessages = 0, KeyBytesEncoding = (KeyBytesEncoding)42 };

        var errors = options.GetValidationErrors();

        Assert.Contains(errors, e => e.StartsWith("Concurrency", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("BatchSize", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("BatchMaxWait", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("MaxTrackedMessages", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("KeyBytesEncoding", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.StartsWith("Destination", StringComparison.Ordinal));
        Assert.Throws<ArgumentException>(options.Validate);
    }

    [Fact]
    public void Registering_a_name_twice_adds_configuration_not_a_second_consumer_and_another_broker_is_refused()
    {
        var services = new ServiceCollection();
        var builder = services.AddIdempotency();

        Assert.True(Idempotency.DependencyInjection.ConsumerRegistration.Register<SampleConsumerOptions>(builder, "test", "orders", o => o.Destination = "q1", null));
        Assert.False(Idempotency.DependencyInjection.ConsumerRegistration.Register<SampleConsumerOptions>(builder, "test", "orders", o => o.BatchSize = 7, null));
        var error = Assert.Throws<InvalidOperationException>(() => Idempotency.DependencyInjection.ConsumerRegistration.Register<SampleConsumerOptions>(builder, "other", "orders", null, null));
        Assert.Contains("'orders'", error.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => Idempotency.DependencyInjection.ConsumerRegistration.Register<SampleConsumerOptions>(builder, "test", "bad name", null, null));

        using var provider = services.BuildServiceProvider();
        var options = provider.GetRequiredService<IOptionsMonitor<SampleConsumerOptions>>().Get("orders");
        Assert.Equal(("q1", 7), (options.Destination, options.BatchSize));
    }

    [Fact]
    public void Consumer_and_handler_options_bind_from_one_configuration_section_and_code_wins()
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Idempotency:Consumers:orders:Destination"] = "from-config",
            ["Idempotency:Consumers:orders:Concurrency"] = "4",
            ["Idempotency:Consumers:orders:BatchMaxWait"] = "00:00:00.050",
            ["Idempotency:Consumers:orders:BatchSize"] = "50",
            ["Idempotency:Consumers:orders:Handler:Retry:MaxAttempts"] = "9",
        }).Build();
        var services = new ServiceCollection();
        var builder = services.AddIdempotency();
        var observer = new RecordingObserver();
        services.AddSingleton<IDeliveryObserver>(observer);

        Idempotency.DependencyInjection.ConsumerRegistration.Register<SampleConsumerOptions>(builder, "test", "orders", o => o.BatchSize = 25, configuration.GetSection("Idempotency:Consumers:orders"));

        using var provider = services.BuildServiceProvider();
        var options = Idempotency.DependencyInjection.ConsumerRegistration.GetOptions<SampleConsumerOptions>(provider, "orders");
        Assert.Equal(("from-config", 4, TimeSpan.FromMilliseconds(50), 25), (options.Destination, options.Concurrency, options.BatchMaxWait, options.BatchSize));
        Assert.Same(observer, Assert.Single(options.Observers));
        var handler = provider.GetRequiredService<IOptionsMonitor<IdempotencyOptions>>().Get("orders");
        Assert.Equal(("orders", 9), (handler.HandlerName, handler.Retry.MaxAttempts));
    }

    [Fact]
    public async Task A_handler_configured_under_a_name_no_consumer_uses_fails_the_start_naming_both()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemoryIdempotencyStore())
            .ConfigureHandler("order", o => o.Retry.MaxAttempts = 2)
            .AddIdempotentProcessor<NoopHandler>("orders");
        using var host = builder.Build();

        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync(TestContext.Current.CancellationToken));

        Assert.Contains("ConfigureHandler(\"order\")", error.Message, StringComparison.Ordinal);
        Assert.Contains("'orders' (processor)", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_registered_processor_takes_its_configured_options_and_runs_the_handler_from_the_container()
    {
        var builder = Host.CreateApplicationBuilder();
        builder.Services.AddSingleton<ConcurrentDictionary<string, int>>();
        builder.Services.AddIdempotency()
            .UseStore(_ => new InMemoryIdempotencyStore())
            .ConfigureHandler("orders", o => o.Retry.MaxAttempts = 2)
            .AddIdempotentProcessor<CountingHandler>("orders");
        using var host = builder.Build();
        await host.StartAsync(TestContext.Current.CancellationToken);

        var processor = host.Services.GetRequiredKeyedService<IdempotentProcessor>("orders");
        var first = await processor.ProcessAsync(Create("k"), TestContext.Current.CancellationToken);
        var second = await processor.ProcessAsync(Create("k"), TestContext.Current.CancellationToken);

        Assert.Equal((ProcessingOutcome.Processed, ProcessingOutcome.Duplicate), (first.Outcome, second.Outcome));
        Assert.Equal(2, processor.Options.Retry.MaxAttempts);
        Assert.Equal(1, host.Services.GetRequiredService<ConcurrentDictionary<string, int>>()["k"]);
        await host.StopAsync(TestContext.Current.CancellationToken);
    }

    [Fact]
    public async Task RunAsync_starts_runs_until_cancelled_then_stops()
    {
        var consumer = new LifecycleConsumer();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);

        var run = consumer.RunAsync(stop.Token);
        await consumer.Started.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.False(run.IsCompleted);
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.Equal(1, consumer.Stops);
    }

    /// <summary>
    /// A run asked to stop while its consumer is still starting (an SQS worker reading the queue's retention, a RabbitMQ
    /// consumer subscribing) ends as any run asked to stop does: the consumer is stopped and the run completes without
    /// an exception, instead of failing with the start's cancellation.
    /// </summary>
    [Fact]
    public async Task RunAsync_cancelled_while_the_consumer_starts_stops_it_and_completes_quietly()
    {
        var consumer = new LifecycleConsumer { StartWaitsForCancellation = true };
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);

        var run = consumer.RunAsync(stop.Token);
        await consumer.Started.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);

        Assert.True(run.IsCompletedSuccessfully);
        Assert.Equal(1, consumer.Stops);
    }

    private static IIdempotentMessageHandler Counting(ConcurrentDictionary<string, int> effects) =>
        IdempotentHandler.Create((context, _) =>
        {
            context.OnInMemoryCommit(() => effects.AddOrUpdate(context.Key, 1, (_, n) => n + 1));
            return ValueTask.CompletedTask;
        });

    private sealed class SampleConsumerOptions : IdempotentConsumerOptions
    {
        public string Destination { get; set; } = string.Empty;

        protected override void AddValidationErrors(IList<string> errors)
        {
            base.AddValidationErrors(errors);
            if (string.IsNullOrEmpty(Destination))
            {
                errors.Add($"{nameof(Destination)} is required.");
            }
        }
    }

    private sealed class RecordingObserver : IDeliveryObserver
    {
        public ConcurrentQueue<DeliveryObservation> Observations { get; } = new();

        public void OnDelivered(DeliveryObservation delivery) => Observations.Enqueue(delivery);
    }

    private sealed class ThrowingObserver : IDeliveryObserver
    {
        public void OnDelivered(DeliveryObservation delivery) => throw new InvalidOperationException("observer bug");
    }

    private sealed class NoopHandler : IIdempotentMessageHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    private sealed class CountingHandler(ConcurrentDictionary<string, int> effects) : IIdempotentMessageHandler
    {
        public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken)
        {
            context.OnInMemoryCommit(() => effects.AddOrUpdate(context.Key, 1, (_, n) => n + 1));
            return ValueTask.CompletedTask;
        }
    }

    private sealed class LifecycleConsumer : IIdempotentConsumer
    {
        private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public TaskCompletionSource Started { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public int Stops { get; private set; }

        public bool StartWaitsForCancellation { get; init; }

        public string Name => "test:lifecycle";

        public IdempotentProcessor Processor { get; } = new(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options());

        public Health.ConsumerHeartbeat? Health => null;

        public Task Completion => _completion.Task;

        public Task StartAsync(CancellationToken cancellationToken = default)
        {
            Started.TrySetResult();
            return StartWaitsForCancellation ? Task.Delay(Timeout.Infinite, cancellationToken) : Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken = default)
        {
            Stops++;
            _completion.TrySetResult();
            return Task.CompletedTask;
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
