using Idempotency.Storage;
using Idempotency.TestSupport;
using StackExchange.Redis;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

/// <summary>
/// Misconfigurations (credentials, ACLs) on private password-protected redis-servers: the shared server's users and
/// password are never touched.
/// </summary>
public sealed class RedisMisconfigurationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static async Task<ConnectionMultiplexer> ConnectAsync(PrivateRedisServer server, string? user, string password)
    {
        var options = ConfigurationOptions.Parse($"127.0.0.1:{server.Port}");
        options.User = user;
        options.Password = password;
        options.AbortOnConnectFail = false; // the usual production setting: the application starts and keeps retrying
        options.ConnectTimeout = 5_000;
        return await ConnectionMultiplexer.ConnectAsync(options);
    }

    [Fact]
    public async Task A_wrong_password_while_the_application_runs_is_store_misconfigured_not_unavailable()
    {
        await using var server = await PrivateRedisServer.StartAsync(password: "right-password");
        await using var connection = await ConnectAsync(server, user: null, password: "wrong-password");
        var store = new RedisIdempotencyStore(connection, RedisFixture.NewOptions());
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => { runs++; return ValueTask.CompletedTask; }), Options());

        var result = await processor.ProcessAsync(Message("k1"), Ct);

        Assert.Equal(ProcessingOutcome.StoreMisconfigured, result.Outcome);
        Assert.Equal(StoreFailureKind.Misconfiguration, result.StoreFailure?.Kind);
        Assert.Contains("password", result.StoreFailure!.Value.Description, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(0, runs);
        Assert.Equal(StoreFailureKind.Misconfiguration, (await store.CheckAsync(Ct))?.Kind);
    }
}
