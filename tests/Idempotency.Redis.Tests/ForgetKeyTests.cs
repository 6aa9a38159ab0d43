using Idempotency.Storage;
using Idempotency.TestSupport;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

public sealed class ForgetKeyTests(RedisFixture redis) : IClassFixture<RedisFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Forgetting_a_completed_key_lets_its_redelivery_run_the_handler_again()
    {
        var store = redis.CreateStore();
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => { runs++; return ValueTask.CompletedTask; }), Options());
        await processor.ProcessAsync(Message("k1"), Ct);

        Assert.True(await store.ForgetKeyAsync("orders", "k1", cancellationToken: Ct));
        Assert.False(await store.ForgetKeyAsync("orders", "k1", cancellationToken: Ct));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("k1"), Ct)).Outcome);
        Assert.Equal(2, runs);
    }

    [Fact]
    public async Task A_key_under_a_live_lease_is_not_forgotten()
    {
        var store = redis.CreateStore();
        await using var transaction = await store.BeginAsync(Ct);
        var claim = await transaction.ClaimAsync(Claim("busy"), Ct);
        Assert.Equal(ClaimStatus.Claimed, claim.Status);

        Assert.False(await store.ForgetKeyAsync(Claim("busy").HandlerName, "busy", cancellationToken: Ct));
        Assert.True((await store.Database.StringGetAsync(store.GetKey(Claim("busy").HandlerName, "busy"))).HasValue);
    }
}
