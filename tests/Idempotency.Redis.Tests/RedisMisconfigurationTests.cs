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

        // On a loaded machine the first reconnect may time out before Redis answers the AUTH, an outage as far as
        // anyone can tell; once a login was refused, the outcome must say so. Before the fix it said outage forever.
        var result = await processor.ProcessAsync(Message("k1"), Ct);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (result.Outcome == ProcessingOutcome.StoreUnavailable && DateTime.UtcNow < deadline)
        {
            await Task.Delay(500, Ct);
            result = await processor.ProcessAsync(Message("k1"), Ct);
        }

        Assert.True(result.Outcome == ProcessingOutcome.StoreMisconfigured, $"{result.Outcome}: {result.StoreFailure?.Description}");
        Assert.Equal(StoreFailureKind.Misconfiguration, result.StoreFailure?.Kind);
        Assert.Contains("password", result.StoreFailure!.Value.Description, StringComparison.OrdinalIgnoreCase);
        Assert.Equal(0, runs);
        Assert.Equal(StoreFailureKind.Misconfiguration, (await store.CheckAsync(Ct))?.Kind);
    }

    /// <summary>
    /// An ACL user refused what the store runs passes a PING but fails every message at run time (NOPERM): the start-up
    /// check must say so. Each case is one user on a private server: what it lacks, and what the check must name.
    /// </summary>
    [Theory]
    [InlineData("-eval -evalsha", "EVAL")] // no scripts at all
    [InlineData("-evalsha", "EVALSHA")] // StackExchange.Redis sends a script by its SHA once loaded
    [InlineData("-set", "SET")] // scripts allowed, but the commands inside them are checked per user too
    [InlineData("-multi", "MULTI")] // handler writes commit in MULTI/EXEC
    public async Task The_start_up_check_fails_for_a_user_refused_a_command_the_store_runs(string refusal, string named)
    {
        await using var server = await PrivateRedisServer.StartAsync(password: "admin-password");
        await using var admin = await ConnectAsync(server, user: null, password: "admin-password");
        var options = RedisFixture.NewOptions();
        var acl = new List<object> { "SETUSER", "app", "on", ">app-password", $"~{options.KeyPrefix}:*", "+@all" };
        acl.AddRange(refusal.Split(' '));
        await admin.GetDatabase().ExecuteAsync("ACL", [.. acl]);
        await using var connection = await ConnectAsync(server, user: "app", password: "app-password");
        var store = new RedisIdempotencyStore(connection, options);

        var failure = await store.CheckAsync(Ct);

        Assert.Equal(StoreFailureKind.Misconfiguration, failure?.Kind);
        Assert.Contains(named, failure!.Value.Description, StringComparison.Ordinal);
        Assert.True(await store.PingAsync(Ct)); // the server answers: a PING alone passed this user
    }

    [Fact]
    public async Task The_start_up_check_fails_for_a_user_whose_key_patterns_miss_the_store_prefix()
    {
        await using var server = await PrivateRedisServer.StartAsync(password: "admin-password");
        await using var admin = await ConnectAsync(server, user: null, password: "admin-password");
        var options = RedisFixture.NewOptions();
        await admin.GetDatabase().ExecuteAsync("ACL", "SETUSER", "app", "on", ">app-password", "~other-app:*", "+@all");
        await using var connection = await ConnectAsync(server, user: "app", password: "app-password");
        var store = new RedisIdempotencyStore(connection, options);

        var failure = await store.CheckAsync(Ct);

        Assert.Equal(StoreFailureKind.Misconfiguration, failure?.Kind);
        Assert.Contains(options.KeyPrefix, failure!.Value.Description, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_start_up_check_passes_a_user_granted_only_the_store_prefix_and_processing_works()
    {
        await using var server = await PrivateRedisServer.StartAsync(password: "admin-password");
        await using var admin = await ConnectAsync(server, user: null, password: "admin-password");
        var options = RedisFixture.NewOptions();
        // Every command, but only the store's keys (StackExchange.Redis's handshake needs more commands than the store).
        await admin.GetDatabase().ExecuteAsync("ACL", "SETUSER", "app", "on", ">app-password", $"~{options.KeyPrefix}:*", "+@all", "-keys", "-flushall");
        await using var connection = await ConnectAsync(server, user: "app", password: "app-password");
        var store = new RedisIdempotencyStore(connection, options);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
        {
            _ = context.GetRedisTransaction().StringIncrementAsync($"{options.KeyPrefix}:count");
            return ValueTask.CompletedTask;
        }), Options());

        Assert.Null(await store.CheckAsync(Ct));
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("k1"), Ct)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("k1"), Ct)).Outcome);
        Assert.Equal(1, (int)await admin.GetDatabase().StringGetAsync($"{options.KeyPrefix}:count"));
    }
}
