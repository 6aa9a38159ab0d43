using Idempotency.InMemory;
using Idempotency.Storage;

namespace Idempotency.Core.Tests;

public sealed class RetentionGuardTests
{
    private static readonly TimeSpan FourteenDays = TimeSpan.FromDays(14);

    [Fact]
    public void A_store_with_a_retention_of_its_own_is_checked_against_it_not_against_the_handlers_option()
    {
        // The handler's option covers the queue's 14 days, the retention the store applies does not.
        var options = new IdempotencyOptions { HandlerName = "orders", Retention = FourteenDays };
        var store = new OwnRetentionStore(TimeSpan.FromDays(7));

        var warning = RetentionGuard.Check(options, FourteenDays, "queue q MessageRetentionPeriod=1209600s", store);

        Assert.NotNull(warning);
        Assert.Contains("7.00:00:00", warning, StringComparison.Ordinal);
        Assert.Contains("fixed-ttl store", warning, StringComparison.Ordinal);
        Assert.Contains("queue q MessageRetentionPeriod=1209600s", warning, StringComparison.Ordinal);
    }

    [Fact]
    public void A_store_retention_covering_the_horizon_draws_no_warning_even_when_the_handlers_option_would()
    {
        var options = new IdempotencyOptions { HandlerName = "orders", Retention = TimeSpan.FromDays(1) };

        Assert.Null(RetentionGuard.Check(options, FourteenDays, "queue q", new OwnRetentionStore(TimeSpan.FromDays(30))));
    }

    [Fact]
    public void A_store_without_a_retention_of_its_own_is_checked_against_the_handlers_option()
    {
        var store = new InMemoryIdempotencyStore();
        Assert.Null(((IIdempotencyStore)store).EnforcedRetention);

        Assert.Null(RetentionGuard.Check(new IdempotencyOptions { HandlerName = "orders", Retention = FourteenDays }, FourteenDays, "queue q", store));
        var warning = RetentionGuard.Check(new IdempotencyOptions { HandlerName = "orders", Retention = TimeSpan.FromDays(7) }, FourteenDays, "queue q", store);
        Assert.NotNull(warning);
        Assert.Contains("Raise Retention", warning, StringComparison.Ordinal);
    }

    /// <summary>A store that keeps keys for a retention of its own, like the Redis store's TTL.</summary>
    private sealed class OwnRetentionStore(TimeSpan retention) : IIdempotencyStore
    {
        public string Name => "fixed-ttl";

        public TimeSpan? EnforcedRetention => retention;

        public ValueTask<IIdempotencyTransaction> BeginAsync(CancellationToken cancellationToken = default) => throw new NotSupportedException();

        public bool IsUnavailable(Exception exception) => false;

        public ValueTask<bool> PingAsync(CancellationToken cancellationToken = default) => ValueTask.FromResult(true);
    }
}
