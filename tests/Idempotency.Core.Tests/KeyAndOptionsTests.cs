using System.Text;
using Idempotency.InMemory;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

public sealed class KeyAndOptionsTests
{
    [Fact]
    public async Task A_key_with_a_lone_surrogate_is_invalid_before_anything_runs()
    {
        var ran = false;
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) =>
        {
            ran = true;
            return ValueTask.CompletedTask;
        }), Options());

        var result = await processor.ProcessAsync(Create("order-\uD800-1"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.InvalidKey, result.Outcome);
        Assert.Contains("surrogate", result.Exception!.Message, StringComparison.Ordinal);
        Assert.False(ran);
    }

    [Fact]
    public void A_valid_surrogate_pair_is_a_valid_key() =>
        Assert.Null(IdempotencyKey.GetValidationError("order-\U0001F600", 100));

    [Fact]
    public void Binary_key_bytes_are_never_decoded_lossily()
    {
        byte[] first = [0xC3, 0x28];
        byte[] second = [0xE2, 0x28, 0xA1];

        Assert.False(IdempotencyKey.TryDecode(first, KeyBytesEncoding.Utf8, out _, out var error));
        Assert.Contains("not valid UTF-8", error, StringComparison.Ordinal);
        Assert.True(IdempotencyKey.TryDecode(first, KeyBytesEncoding.Hex, out var hexFirst, out _));
        Assert.True(IdempotencyKey.TryDecode(second, KeyBytesEncoding.Hex, out var hexSecond, out _));
        Assert.NotEqual(hexFirst, hexSecond);
        Assert.True(IdempotencyKey.TryDecode(first, KeyBytesEncoding.Base64, out var base64, out _));
        Assert.Equal(first, Convert.FromBase64String(base64));
        Assert.True(IdempotencyKey.TryDecode(Encoding.UTF8.GetBytes("ключ-1"), KeyBytesEncoding.Utf8, out var text, out _));
        Assert.Equal("ключ-1", text);
    }

    [Fact]
    public async Task An_adapter_key_error_is_an_invalid_key_with_its_reason()
    {
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options());

        var result = await processor.ProcessAsync(new IncomingMessage(null, "x"u8.ToArray()) { KeyError = "bytes are not UTF-8" }, TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.InvalidKey, result.Outcome);
        Assert.Equal("bytes are not UTF-8", result.Exception!.Message);
        Assert.Equal(Delivery.DeliveryAction.DeadLetter, processor.Decide(result, 1).Action);
    }

    [Fact]
    public void MaxKeyBytes_above_the_store_limit_is_refused_at_construction()
    {
        var options = Options();
        options.MaxKeyBytes = 2000;

        var error = Assert.Throws<ArgumentException>(() => new IdempotentProcessor(new ScriptedStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options));

        Assert.Contains("at most 1000", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Options_are_copied_at_construction()
    {
        var options = Options(policy: PayloadMismatchPolicy.Quarantine);
        options.Retry.MaxAttempts = 2;
        var processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => throw new InvalidOperationException("x")), options);

        options.HandlerName = "changed";
        options.Retry.MaxAttempts = 50;
        processor.Options.Retry.MaxAttempts = 60;
        var result = await processor.ProcessAsync(Create("k"), TestContext.Current.CancellationToken);

        Assert.Equal("h", processor.HandlerName);
        Assert.Equal(2, processor.Options.Retry.MaxAttempts);
        Assert.Equal(Delivery.DeliveryAction.DeadLetter, processor.Decide(result, 2).Action);
    }

    [Theory]
    [InlineData(PayloadMismatchPolicy.Quarantine)]
    [InlineData(PayloadMismatchPolicy.Fail)]
    public async Task An_exact_copy_behind_a_mismatching_copy_in_a_batch_is_a_duplicate(PayloadMismatchPolicy policy)
    {
        var store = new InMemoryIdempotencyStore();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options(policy: policy));
        await processor.ProcessAsync(Create("k", "original"), TestContext.Current.CancellationToken);

        var results = await processor.ProcessBatchAsync([Create("k", "other"), Create("k", "original")], TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.PayloadMismatch, results[0].Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, results[1].Outcome);
    }
}
