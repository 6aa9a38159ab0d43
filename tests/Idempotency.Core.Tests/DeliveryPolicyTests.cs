using Idempotency.Delivery;
using Idempotency.InMemory;
using static Idempotency.Core.Tests.TestMessages;

namespace Idempotency.Core.Tests;

public sealed class DeliveryPolicyTests
{
    private static async Task<ProcessingResult> Run(IdempotencyOptions options, string? key = "k", Func<ValueTask>? handler = null, InMemoryIdempotencyStore? store = null)
    {
        var processor = new IdempotentProcessor(store ?? new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => handler?.Invoke() ?? ValueTask.CompletedTask), options);
        return await processor.ProcessAsync(Create(key));
    }

    [Fact]
    public async Task Committed_outcomes_are_acknowledged()
    {
        var options = Options();
        Assert.Equal(DeliveryAction.Acknowledge, DeliveryPolicy.Decide(await Run(options), 1, options).Action);
    }

    [Fact]
    public async Task Failures_retry_with_growing_delay_then_dead_letter_at_max_attempts()
    {
        var options = Options();
        options.Retry.MaxAttempts = 3;
        options.Retry.UseJitter = false;
        options.Retry.InitialDelay = TimeSpan.FromMilliseconds(100);
        var failed = await Run(options, handler: () => throw new TimeoutException("downstream"));

        var first = DeliveryPolicy.Decide(failed, 1, options);
        var second = DeliveryPolicy.Decide(failed, 2, options);
        var last = DeliveryPolicy.Decide(failed, 3, options);

        Assert.Equal((DeliveryAction.Retry, TimeSpan.FromMilliseconds(100)), (first.Action, first.Delay));
        Assert.Equal((DeliveryAction.Retry, TimeSpan.FromMilliseconds(200)), (second.Action, second.Delay));
        Assert.Equal(DeliveryAction.DeadLetter, last.Action);
        Assert.Equal(DeliveryPolicy.HandlerFailed, last.ReasonCode);
        Assert.Contains("System.TimeoutException: downstream", last.Reason);
    }

    [Fact]
    public async Task Store_outage_pauses_and_never_dead_letters_however_many_attempts()
    {
        var options = Options();
        var store = new InMemoryIdempotencyStore { Unavailable = true };
        var result = await Run(options, store: store);

        var decision = DeliveryPolicy.Decide(result, attempt: 1000, options, storeOutageCount: 50);

        Assert.Equal(DeliveryAction.PauseAndRetry, decision.Action);
        Assert.InRange(decision.Delay, options.StoreUnavailableBackoff.MaxDelay / 2, options.StoreUnavailableBackoff.MaxDelay);
    }

    [Fact]
    public async Task Missing_key_is_dead_lettered_by_default_and_retried_under_fail()
    {
        var deadLetter = Options();
        var fail = Options();
        fail.MissingKeyPolicy = MissingKeyPolicy.Fail;

        var d1 = DeliveryPolicy.Decide(await Run(deadLetter, key: null), 1, deadLetter);
        var d2 = DeliveryPolicy.Decide(await Run(fail, key: null), 1, fail);

        Assert.Equal((DeliveryAction.DeadLetter, DeliveryPolicy.InvalidKey), (d1.Action, d1.ReasonCode));
        Assert.Equal(DeliveryAction.Retry, d2.Action);
    }

    [Fact]
    public async Task Quarantined_mismatch_is_dead_lettered_with_both_fingerprints()
    {
        var options = Options(policy: PayloadMismatchPolicy.Quarantine);
        var store = new InMemoryIdempotencyStore();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options);
        await processor.ProcessAsync(Create("k", "one"), TestContext.Current.CancellationToken);
        var result = await processor.ProcessAsync(Create("k", "two"), TestContext.Current.CancellationToken);

        var decision = DeliveryPolicy.Decide(result, 1, options);
        var headers = DeadLetterHeaders.Create(result, decision, options.HandlerName, 1);

        Assert.Equal(DeliveryAction.DeadLetter, decision.Action);
        Assert.Equal(DeliveryPolicy.PayloadMismatch, headers[DeadLetterHeaders.ReasonCode]);
        Assert.Equal(PayloadFingerprint.ToHex(PayloadFingerprint.Compute("one"u8)), headers[DeadLetterHeaders.StoredFingerprint]);
        Assert.Equal(PayloadFingerprint.ToHex(PayloadFingerprint.Compute("two"u8)), headers[DeadLetterHeaders.PayloadFingerprint]);
        Assert.Equal("k", headers[DeadLetterHeaders.Key]);
    }

    [Fact]
    public void Jittered_backoff_stays_within_half_and_full_delay_and_caps_at_max()
    {
        var backoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromSeconds(1) };
        for (var attempt = 1; attempt <= 12; attempt++)
        {
            var full = TimeSpan.FromMilliseconds(Math.Min(1000, 100 * Math.Pow(2, attempt - 1)));
            for (var i = 0; i < 50; i++)
            {
                Assert.InRange(backoff.GetDelay(attempt), full / 2, full);
            }
        }
    }
}
