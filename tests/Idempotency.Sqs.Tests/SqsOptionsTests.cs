using Amazon.SQS.Model;
using Idempotency.Delivery;

namespace Idempotency.Sqs.Tests;

/// <summary>Unit tests: options validation, key selection, message mapping, dead-letter attributes. No services needed.</summary>
public sealed class SqsOptionsTests
{
    private const string Queue = "http://sqs.us-east-1.localhost:4566/000000000000/orders";

    private static IdempotentProcessor Processor() =>
        new(new InMemory.InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "orders" });

    private static IdempotentSqsWorker Worker(SqsIdempotencyOptions options) =>
        new(new ThrowingSqs().Client, Processor(), options);

    private static SqsMessageReader Reader(SqsIdempotencyOptions options) =>
        new(options, "orders", Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);

    private static string? Key(SqsMessageReader reader, Message message) => reader.SelectKey(message, out _);

    [Theory]
    [InlineData(nameof(SqsIdempotencyOptions.QueueUrl))]
    [InlineData(nameof(SqsIdempotencyOptions.WaitTimeSeconds))]
    [InlineData(nameof(SqsIdempotencyOptions.MaxMessages))]
    [InlineData(nameof(SqsIdempotencyOptions.Concurrency))]
    [InlineData(nameof(SqsIdempotencyOptions.BatchSize))]
    [InlineData(nameof(SqsIdempotencyOptions.BatchMaxWait))]
    [InlineData(nameof(SqsIdempotencyOptions.VisibilityTimeout))]
    [InlineData(nameof(SqsIdempotencyOptions.HeartbeatFraction))]
    [InlineData(nameof(SqsIdempotencyOptions.DeadLetterQueueUrl))]
    [InlineData(nameof(SqsIdempotencyOptions.KeyAttributeName))]
    [InlineData(nameof(SqsIdempotencyOptions.ShutdownTimeout))]
    [InlineData(nameof(SqsIdempotencyOptions.ReceiveErrorDelay))]
    public void Invalid_option_error_names_the_setting(string setting)
    {
        var options = new SqsIdempotencyOptions { QueueUrl = Queue };
        switch (setting)
        {
            case nameof(SqsIdempotencyOptions.QueueUrl): options.QueueUrl = "orders"; break;
            case nameof(SqsIdempotencyOptions.WaitTimeSeconds): options.WaitTimeSeconds = 21; break;
            case nameof(SqsIdempotencyOptions.MaxMessages): options.MaxMessages = 11; break;
            case nameof(SqsIdempotencyOptions.Concurrency): options.Concurrency = SqsIdempotencyOptions.MaxPollers + 1; break;
            case nameof(SqsIdempotencyOptions.BatchSize): options.BatchSize = 11; break;
            case nameof(SqsIdempotencyOptions.BatchMaxWait): options.BatchMaxWait = TimeSpan.FromMilliseconds(50); break;
            case nameof(SqsIdempotencyOptions.VisibilityTimeout): options.VisibilityTimeout = TimeSpan.FromMilliseconds(500); break;
            case nameof(SqsIdempotencyOptions.HeartbeatFraction): options.HeartbeatFraction = 1.0; break;
            case nameof(SqsIdempotencyOptions.DeadLetterQueueUrl): options.DeadLetterQueueUrl = Queue; break;
            case nameof(SqsIdempotencyOptions.KeyAttributeName): options.KeyAttributeName = "AWS.key"; break;
            case nameof(SqsIdempotencyOptions.ShutdownTimeout): options.ShutdownTimeout = TimeSpan.FromSeconds(-1); break;
            case nameof(SqsIdempotencyOptions.ReceiveErrorDelay): options.ReceiveErrorDelay = TimeSpan.FromHours(1); break;
        }

        var errors = options.GetValidationErrors();
        Assert.Single(errors);
        Assert.StartsWith(setting, errors[0], StringComparison.Ordinal);
        var thrown = Assert.Throws<ArgumentException>(() => Worker(options));
        Assert.Contains(setting, thrown.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Default_options_with_a_queue_url_are_valid()
    {
        var options = new SqsIdempotencyOptions { QueueUrl = Queue };
        Assert.Empty(options.GetValidationErrors());
        Assert.Equal(10, options.MaxMessages);
        Assert.Equal(20, options.WaitTimeSeconds);
        Assert.Equal(2, options.Concurrency);
        Assert.Equal(10, options.BatchSize); // natural batching on: a whole receive per store transaction
        Assert.Equal("IdempotencyKey", options.KeyAttributeName);
        Assert.False(options.UseMessageIdAsKey);
    }

    [Fact]
    public void No_key_source_is_an_error_naming_the_key_settings()
    {
        var options = new SqsIdempotencyOptions { QueueUrl = Queue, KeyAttributeName = null };
        var error = Assert.Single(options.GetValidationErrors());
        Assert.Contains(nameof(SqsIdempotencyOptions.KeyAttributeName), error, StringComparison.Ordinal);
        Assert.Contains(nameof(SqsIdempotencyOptions.KeySelector), error, StringComparison.Ordinal);

        options.QueueUrl = Queue + ".fifo";
        Assert.Empty(options.GetValidationErrors()); // the deduplication id is a key source on FIFO queues
    }

    [Fact]
    public void Key_comes_from_attribute_then_fifo_deduplication_id_then_selector_and_message_id_only_on_opt_in()
    {
        static Message M(string? attribute, string? dedup) => new()
        {
            MessageId = "mid-1",
            Body = "{\"order\":\"from-body\"}",
            MessageAttributes = attribute is null ? null : new() { ["IdempotencyKey"] = new MessageAttributeValue { DataType = "String", StringValue = attribute } },
            Attributes = dedup is null ? null : new() { ["MessageDeduplicationId"] = dedup },
        };

        var fifo = Reader(new SqsIdempotencyOptions { QueueUrl = Queue + ".fifo", KeySelector = m => m.Body.Contains("from-body", StringComparison.Ordinal) ? "selected" : null });
        Assert.Equal("attr", Key(fifo, M("attr", "dedup")));
        Assert.Equal("dedup", Key(fifo, M(null, "dedup")));
        Assert.Equal("selected", Key(fifo, M(null, null)));

        var standard = Reader(new SqsIdempotencyOptions { QueueUrl = Queue });
        Assert.Null(Key(standard, M(null, "dedup"))); // deduplication ids only count on FIFO queues
        Assert.Null(Key(standard, M(null, null)));    // MessageId is not used unless asked for

        var optIn = Reader(new SqsIdempotencyOptions { QueueUrl = Queue, UseMessageIdAsKey = true, KeySelector = _ => throw new FormatException("bad body") });
        Assert.Equal("mid-1", Key(optIn, M(null, null)));
    }

    [Fact]
    public void Message_maps_attempt_timestamp_headers_and_native_message()
    {
        var worker = Reader(new SqsIdempotencyOptions { QueueUrl = Queue });
        var message = new Message
        {
            MessageId = "m",
            Body = "hello",
            Attributes = new() { ["ApproximateReceiveCount"] = "3", ["SentTimestamp"] = "1700000000000" },
            MessageAttributes = new()
            {
                ["IdempotencyKey"] = new MessageAttributeValue { DataType = "String", StringValue = "k-1" },
                ["traceparent"] = new MessageAttributeValue { DataType = "String", StringValue = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" },
            },
        };

        var incoming = worker.ToIncoming(message);

        Assert.Equal("k-1", incoming.Key);
        Assert.Equal("aws_sqs", incoming.Broker);
        Assert.Equal("orders", incoming.Destination);
        Assert.Equal(3, incoming.DeliveryAttempt);
        Assert.True(incoming.Redelivered);
        Assert.Equal(DateTimeOffset.FromUnixTimeMilliseconds(1700000000000), incoming.Timestamp);
        Assert.Equal("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", incoming.Headers!["traceparent"]);
        Assert.Same(message, incoming.Native);
        Assert.Equal("hello"u8.ToArray(), incoming.Body.ToArray());
    }

    [Fact]
    public async Task Dead_letter_attributes_keep_the_key_and_reason_and_stay_within_the_sqs_limit_of_ten()
    {
        var worker = Reader(new SqsIdempotencyOptions { QueueUrl = Queue, DeadLetterQueueUrl = Queue + "-dlq" });
        var attributes = new Dictionary<string, MessageAttributeValue> { ["IdempotencyKey"] = new() { DataType = "String", StringValue = "k-9" } };
        for (var i = 0; i < 9; i++)
        {
            attributes[$"extra{i}"] = new MessageAttributeValue { DataType = "String", StringValue = "x" };
        }

        var message = new Message { MessageId = "m-9", Body = "b", MessageAttributes = attributes, Attributes = new() { ["ApproximateReceiveCount"] = "5" } };
        var processor = new IdempotentProcessor(new InMemory.InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => throw new InvalidOperationException("boom")), new IdempotencyOptions { HandlerName = "orders" });
        var result = await processor.ProcessAsync(worker.ToIncoming(message), TestContext.Current.CancellationToken);
        var decision = DeliveryPolicy.Decide(result, 5, processor.Options);

        var dead = worker.DeadLetterAttributes(message, DeadLetterHeaders.Create(result, decision, "orders", 5));

        Assert.Equal(DeliveryAction.DeadLetter, decision.Action);
        Assert.Equal(SqsDeadLetterAttributes.MaxAttributes, dead.Count);
        Assert.Equal("k-9", dead["IdempotencyKey"].StringValue);
        Assert.Equal("handler_failed", dead[DeadLetterHeaders.ReasonCode].StringValue);
        Assert.Equal("5", dead[DeadLetterHeaders.Attempts].StringValue);
        Assert.Equal(Queue, dead[SqsDeadLetterAttributes.SourceQueue].StringValue);
        Assert.Equal("m-9", dead[SqsDeadLetterAttributes.MessageId].StringValue);
        Assert.Contains("boom", dead[DeadLetterHeaders.ErrorMessage].StringValue, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(KeyBytesEncoding.Utf8, new byte[] { 0x6b, 0x2d, 0x31 }, "k-1", null)]
    [InlineData(KeyBytesEncoding.Utf8, new byte[] { 0xff, 0xfe }, null, "not valid UTF-8")]
    [InlineData(KeyBytesEncoding.Hex, new byte[] { 0xff, 0xfe }, "fffe", null)]
    [InlineData(KeyBytesEncoding.Base64, new byte[] { 0xff, 0xfe }, "//4=", null)]
    public void A_binary_key_attribute_is_decoded_exactly_or_refused_never_lossily(KeyBytesEncoding encoding, byte[] bytes, string? key, string? error)
    {
        var reader = Reader(new SqsIdempotencyOptions { QueueUrl = Queue, KeyBytesEncoding = encoding });
        var message = new Message
        {
            MessageId = "m",
            Body = "b",
            MessageAttributes = new() { ["IdempotencyKey"] = new MessageAttributeValue { DataType = "Binary", BinaryValue = new MemoryStream(bytes) } },
        };

        var incoming = reader.ToIncoming(message);

        Assert.Equal(key, incoming.Key);
        if (error is null)
        {
            Assert.Null(incoming.KeyError);
        }
        else
        {
            Assert.Contains(error, incoming.KeyError, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Obsolete_names_forward_to_the_shared_ones()
    {
#pragma warning disable CS0618 // The aliases under test.
        var options = new SqsIdempotencyOptions { QueueUrl = Queue, Pollers = 7, BatchProcessing = false };
        Assert.Equal(7, options.Concurrency);
        Assert.Equal(1, options.BatchSize);
        options.BatchSize = 4;
        Assert.True(options.BatchProcessing);
        Assert.Equal(7, options.Pollers);
#pragma warning restore CS0618
    }
}
