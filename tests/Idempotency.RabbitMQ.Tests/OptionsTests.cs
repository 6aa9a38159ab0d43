using Idempotency.InMemory;

namespace Idempotency.RabbitMQ.Tests;

public sealed class OptionsTests
{
    [Fact]
    public void Defaults_are_valid_once_a_queue_is_set()
    {
        Assert.Empty(new RabbitMqIdempotencyOptions { Queue = "orders" }.GetValidationErrors());
    }

    [Fact]
    public void Validation_errors_name_each_bad_setting()
    {
        var errors = new RabbitMqIdempotencyOptions
        {
            Queue = " ",
            Concurrency = 0,
            PrefetchCount = 70_000,
            BatchSize = 0,
            BatchMaxWait = TimeSpan.FromSeconds(-1),
            KeyHeader = string.Empty,
            ShutdownTimeout = TimeSpan.FromHours(2),
            MaxTrackedMessages = 0,
        }.GetValidationErrors();

        foreach (var setting in new[] { "Queue", "Concurrency", "PrefetchCount", "BatchSize", "BatchMaxWait", "KeyHeader", "ShutdownTimeout", "MaxTrackedMessages" })
        {
            Assert.Contains(errors, e => e.StartsWith(setting, StringComparison.Ordinal));
        }
    }

    [Theory]
    [InlineData(nameof(RabbitMqIdempotencyOptions.Queue))]
    [InlineData(nameof(RabbitMqIdempotencyOptions.KeyHeader))]
    [InlineData(nameof(RabbitMqIdempotencyOptions.DeadLetterExchange))]
    [InlineData(nameof(RabbitMqIdempotencyOptions.DeadLetterRoutingKey))]
    [InlineData(nameof(RabbitMqIdempotencyOptions.ConsumerTag))]
    public void Amqp_short_strings_are_limited_to_255_utf8_bytes_not_characters(string setting)
    {
        // 128 characters, 256 bytes: within a character limit, over the wire's.
        var tooLong = Validate(setting, new string('\u00e9', 128));
        Assert.Contains(tooLong, e => e.StartsWith(setting, StringComparison.Ordinal) && e.Contains("at most 255 UTF-8 bytes", StringComparison.Ordinal) && e.Contains("was 256 bytes", StringComparison.Ordinal));

        Assert.Empty(Validate(setting, new string('a', 255)));
        Assert.Empty(Validate(setting, new string('\u00e9', 127) + "a"));

        static IReadOnlyList<string> Validate(string setting, string value)
        {
            var options = new RabbitMqIdempotencyOptions { Queue = "q" };
            typeof(RabbitMqIdempotencyOptions).GetProperty(setting)!.SetValue(options, value);
            return options.GetValidationErrors();
        }
    }

    [Fact]
    public void Prefetch_below_concurrency_or_batch_size_is_rejected_by_name()
    {
        var concurrency = new RabbitMqIdempotencyOptions { Queue = "q", Concurrency = 8, PrefetchCount = 4 }.GetValidationErrors();
        Assert.Contains(concurrency, e => e.Contains("PrefetchCount must be at least Concurrency", StringComparison.Ordinal));

        var batch = new RabbitMqIdempotencyOptions { Queue = "q", BatchSize = 100, PrefetchCount = 50, BatchMaxWait = TimeSpan.FromMilliseconds(20) }.GetValidationErrors();
        Assert.Contains(batch, e => e.Contains("PrefetchCount must be at least BatchSize", StringComparison.Ordinal));

        // Natural batching never waits for a batch to fill, so a smaller prefetch only makes batches smaller.
        Assert.Empty(new RabbitMqIdempotencyOptions { Queue = "q", BatchSize = 100, PrefetchCount = 50 }.GetValidationErrors());
    }

    [Fact]
    public void Consumer_refuses_invalid_options_with_the_setting_in_the_message()
    {
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "h" });
        var channel = new DispatchProxyChannel();
        var error = Assert.Throws<ArgumentException>(() => new IdempotentRabbitMqConsumer(channel.Channel, processor, new RabbitMqIdempotencyOptions { Queue = "q", Concurrency = 0 }));
        Assert.Contains("Concurrency", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Former_names_forward_to_the_shared_ones()
    {
#pragma warning disable CS0618 // the obsolete aliases are what is tested
        var options = new RabbitMqIdempotencyOptions { Queue = "q", HandlerConcurrency = 3, BatchTimeout = TimeSpan.FromMilliseconds(7) };
        Assert.Equal(3, options.Concurrency);
        Assert.Equal(TimeSpan.FromMilliseconds(7), options.BatchMaxWait);
        options.Concurrency = 5;
        Assert.Equal(5, options.HandlerConcurrency);
#pragma warning restore CS0618
        Assert.IsAssignableFrom<IdempotentConsumerOptions>(options);
        Assert.Equal((100, 1, TimeSpan.Zero), (options.PrefetchCount, new RabbitMqIdempotencyOptions().Concurrency, new RabbitMqIdempotencyOptions().BatchMaxWait));
        Assert.Equal(100, new RabbitMqIdempotencyOptions().BatchSize);
    }

    [Fact]
    public void Attempt_tracker_forgets_the_least_recently_seen_message_first()
    {
        var tracker = new Idempotency.Delivery.AttemptLedger(capacity: 2);
        tracker.RecordFailure("a");
        tracker.RecordFailure("b");
        tracker.Get("a");
        tracker.RecordFailure("c");

        Assert.Equal(2, tracker.Count);
        Assert.Equal((1, 0), tracker.Get("a"));
        Assert.Equal((0, 0), tracker.Get("b"));
        tracker.RecordRequeue("c");
        Assert.Equal((1, 1), tracker.Get("c"));
    }

    /// <summary>An IChannel that is never used: option validation happens before the channel is touched.</summary>
    private sealed class DispatchProxyChannel
    {
        public global::RabbitMQ.Client.IChannel Channel { get; } = System.Reflection.DispatchProxy.Create<global::RabbitMQ.Client.IChannel, Unused>();

        public class Unused : System.Reflection.DispatchProxy
        {
            protected override object? Invoke(System.Reflection.MethodInfo? targetMethod, object?[]? args) => throw new NotSupportedException();
        }
    }
}
