using System.Text;
using Idempotency.Outbox;
using Idempotency.Storage;
using Idempotency.TestSupport;
using StackExchange.Redis;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

public sealed class RedisStoreTests(RedisFixture redis) : IClassFixture<RedisFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Redis-held state: the handler counts the message and remembers its key, in the store's MULTI/EXEC.</summary>
    private static IIdempotentMessageHandler CountInRedis(string prefix, Action? onRun = null) =>
        IdempotentHandler.Create((context, ct) =>
        {
            onRun?.Invoke();
            var transaction = context.GetRedisTransaction();
            _ = transaction.StringIncrementAsync($"{prefix}:state:count");
            _ = transaction.SetAddAsync($"{prefix}:state:keys", context.Key);
            return ValueTask.CompletedTask;
        });

    [Fact]
    public async Task Sixteen_concurrent_claims_of_one_key_have_exactly_one_winner()
    {
        var store = redis.CreateStore();
        using var start = new ManualResetEventSlim();
        var tasks = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            start.Wait();
            var transaction = await store.BeginAsync();
            return (transaction, claim: await transaction.ClaimAsync(Claim("hot")));
        })).ToArray();
        start.Set();
        var results = await Task.WhenAll(tasks);

        Assert.Equal(1, results.Count(r => r.claim.Status == ClaimStatus.Claimed));
        Assert.Equal(15, results.Count(r => r.claim.Status == ClaimStatus.HeldByAnother));
        var winner = (RedisIdempotencyTransaction)results.Single(r => r.claim.Status == ClaimStatus.Claimed).transaction;
        Assert.Equal(winner.LeaseToken, await store.FindLeaseTokenAsync("orders", "hot"));
        foreach (var (transaction, _) in results)
        {
            await transaction.DisposeAsync();
        }
    }

    [Fact]
    public async Task Sixteen_concurrent_deliveries_through_the_processor_run_the_handler_once_and_the_rest_are_in_progress()
    {
        var store = redis.CreateStore();
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            Interlocked.Increment(ref runs);
            await Task.Delay(300, ct); // hold the lease while the others arrive
            _ = context.GetRedisTransaction().StringIncrementAsync($"{store.Options.KeyPrefix}:state:count");
        }), Options());

        using var start = new ManualResetEventSlim();
        var tasks = Enumerable.Range(0, 16).Select(_ => Task.Run(async () =>
        {
            start.Wait();
            return await processor.ProcessAsync(Message("hot"));
        })).ToArray();
        start.Set();
        var results = await Task.WhenAll(tasks);

        Assert.Equal(1, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(15, results.Count(r => r.Outcome is ProcessingOutcome.InProgress or ProcessingOutcome.Duplicate));
        Assert.Equal(1, runs);
        Assert.Equal(1, (int)await store.Database.StringGetAsync($"{store.Options.KeyPrefix}:state:count"));
    }

    [Fact]
    public async Task Expired_lease_is_taken_over_and_the_stale_workers_completion_is_refused()
    {
        var store = redis.CreateStore(o => o.LeaseDuration = TimeSpan.FromMilliseconds(300));
        var patient = new RedisIdempotencyStore(redis.Connection, new RedisIdempotencyStoreOptions { KeyPrefix = store.Options.KeyPrefix });
        var counter = $"{store.Options.KeyPrefix}:state:count";
        var claim = Claim("slow");

        // Worker A claims and queues a Redis write, then stalls past its lease (a GC pause, a hung call, a crash).
        var stale = (RedisIdempotencyTransaction)await store.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await stale.ClaimAsync(claim, Ct)).Status);
        _ = stale.RedisTransaction.StringIncrementAsync(counter);
        await Task.Delay(600, Ct);

        // Worker B (with a 30 s lease) takes the key over and completes it.
        var fresh = (RedisIdempotencyTransaction)await patient.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await fresh.ClaimAsync(claim, Ct)).Status);
        _ = fresh.RedisTransaction.StringIncrementAsync(counter);

        // A's commit is refused while B holds the lease: nothing of A is applied.
        var lost = await Assert.ThrowsAsync<ClaimLostException>(async () => await stale.CommitAsync([new CompletionRecord(claim, TimeSpan.Zero)], [], Ct));
        Assert.Equal("slow", lost.Key);
        Assert.False(await store.Database.KeyExistsAsync(counter));
        Assert.Null(await store.FindAsync("orders", "slow"));
        await stale.DisposeAsync();
        Assert.Equal(fresh.LeaseToken, await store.FindLeaseTokenAsync("orders", "slow")); // A's rollback left B's lease alone

        await fresh.CommitAsync([new CompletionRecord(claim, TimeSpan.Zero)], [], Ct);
        await fresh.DisposeAsync();
        Assert.Equal(1, (int)await store.Database.StringGetAsync(counter));
        Assert.NotNull(await store.FindAsync("orders", "slow"));
        Assert.Null(await store.FindLeaseTokenAsync("orders", "slow"));
    }

    [Fact]
    public async Task Batch_commit_is_refused_as_a_whole_when_one_key_was_taken_over_and_writes_nothing()
    {
        var store = redis.CreateStore(o => o.LeaseDuration = TimeSpan.FromMilliseconds(200));
        ClaimRequest[] claims = [Claim("b-1"), Claim("b-2"), Claim("b-3")];
        var stale = await store.BeginAsync(Ct);
        Assert.All(await stale.ClaimBatchAsync(claims, Ct), r => Assert.Equal(ClaimStatus.Claimed, r.Status));
        await Task.Delay(400, Ct); // every lease expired; another worker takes only b-2
        var fresh = (RedisIdempotencyTransaction)await store.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await fresh.ClaimAsync(claims[1], Ct)).Status);

        var lost = await Assert.ThrowsAsync<ClaimLostException>(async () => await stale.CommitAsync(claims.Select(c => new CompletionRecord(c, TimeSpan.Zero)).ToArray(), [], Ct));
        Assert.Equal("b-2", lost.Key);
        Assert.Null(await store.FindAsync("orders", "b-1"));
        Assert.Null(await store.FindAsync("orders", "b-3"));
        Assert.Equal(fresh.LeaseToken, await store.FindLeaseTokenAsync("orders", "b-2"));
        await stale.DisposeAsync();
        await fresh.DisposeAsync();
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Keys_a_batch_claimed_but_did_not_complete_are_released_by_its_commit_and_never_pass_for_processed(bool withRedisWrites)
    {
        // A batch commit marks the transaction committed, not each key: a claimed key left out of it (its handler
        // failed) must be released in the same atomic step, or it would answer Duplicate without ever being processed.
        var store = redis.CreateStore();
        ClaimRequest[] claims = [Claim("p-1"), Claim("p-2"), Claim("p-3")];
        var first = await store.BeginAsync(Ct);
        Assert.All(await first.ClaimBatchAsync(claims, Ct), r => Assert.Equal(ClaimStatus.Claimed, r.Status));
        if (withRedisWrites)
        {
            _ = ((RedisIdempotencyTransaction)first).RedisTransaction.StringIncrementAsync($"{store.Options.KeyPrefix}:state:count");
        }

        await first.CommitAsync([new CompletionRecord(claims[0], TimeSpan.Zero), new CompletionRecord(claims[2], TimeSpan.Zero)], [], Ct);
        await first.DisposeAsync();

        Assert.NotNull(await store.FindAsync("orders", "p-1"));
        Assert.Null(await store.FindAsync("orders", "p-2"));
        Assert.NotNull(await store.FindAsync("orders", "p-3"));
        Assert.False(await store.Database.KeyExistsAsync(store.GetKey("orders", "p-2")));
        var again = await store.BeginAsync(Ct);
        var results = await again.ClaimBatchAsync(claims, Ct);
        Assert.Equal([ClaimStatus.AlreadyProcessed, ClaimStatus.Claimed, ClaimStatus.AlreadyProcessed], results.Select(r => r.Status));
        Assert.Equal(claims[0].Fingerprint.ToArray(), results[0].StoredFingerprint.ToArray());
        await again.DisposeAsync();
        Assert.Equal(withRedisWrites ? 1 : 0, (int)await store.Database.StringGetAsync($"{store.Options.KeyPrefix}:state:count"));
    }

    [Fact]
    public async Task A_rollback_after_a_commit_whose_reply_was_lost_leaves_the_keys_processed()
    {
        // The commit ran on the server but its reply was lost (a timeout): the caller rolls back and the broker
        // redelivers. Releasing the claims now would free committed keys and let the redelivery apply them again.
        var store = redis.CreateStore();
        ClaimRequest[] claims = [Claim("lost-1"), Claim("lost-2")];
        var transaction = (RedisIdempotencyTransaction)await store.BeginAsync(Ct);
        await transaction.ClaimBatchAsync(claims, Ct);
        await transaction.CommitAsync(claims.Select(c => new CompletionRecord(c, TimeSpan.Zero)).ToArray(), [], Ct);

        var keys = claims.Select(c => store.GetKey(c.HandlerName, c.Key)).ToArray();
        Assert.Equal(0, await store.ReleaseAsync(transaction.Lease!, keys));
        Assert.Equal(0, await store.CommitAsync(transaction.Lease!, [new CompletionRecord(claims[0], TimeSpan.Zero)], [])); // a retried commit is done already

        var again = await store.BeginAsync(Ct);
        Assert.All(await again.ClaimBatchAsync(claims, Ct), r => Assert.Equal(ClaimStatus.AlreadyProcessed, r.Status));
        await again.DisposeAsync();
        await transaction.DisposeAsync();
    }

    [Fact]
    public async Task A_later_claim_does_not_revive_a_lease_that_expired_while_an_earlier_key_was_taken_over()
    {
        var store = redis.CreateStore(o => o.LeaseDuration = TimeSpan.FromMilliseconds(200));
        var patient = new RedisIdempotencyStore(redis.Connection, new RedisIdempotencyStoreOptions { KeyPrefix = store.Options.KeyPrefix });
        var stale = await store.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await stale.ClaimAsync(Claim("r-1"), Ct)).Status);
        await Task.Delay(400, Ct);
        var fresh = await patient.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await fresh.ClaimAsync(Claim("r-1"), Ct)).Status);

        // The stale transaction claims another key; its status must not say "in progress, nothing taken" again.
        Assert.Equal(ClaimStatus.Claimed, (await stale.ClaimAsync(Claim("r-2"), Ct)).Status);
        var lost = await Assert.ThrowsAsync<ClaimLostException>(async () => await stale.CommitAsync([new CompletionRecord(Claim("r-1"), TimeSpan.Zero), new CompletionRecord(Claim("r-2"), TimeSpan.Zero)], [], Ct));
        Assert.Equal("r-1", lost.Key);
        await stale.DisposeAsync();

        await fresh.CommitAsync([new CompletionRecord(Claim("r-1"), TimeSpan.Zero)], [], Ct);
        await fresh.DisposeAsync();
        Assert.NotNull(await store.FindAsync("orders", "r-1"));
        Assert.Null(await store.FindAsync("orders", "r-2"));
        Assert.False(await store.Database.KeyExistsAsync(store.GetKey("orders", "r-2"))); // released by the stale rollback
    }

    [Fact]
    public async Task A_batch_commit_writes_one_status_key_and_leaves_each_claimed_key_as_written_by_the_claim()
    {
        // The point of the layout: per key one write (the claim); the commit writes the transaction's status once.
        await using var privateServer = await PrivateRedisServer.StartAsync();
        await using var connection = await ConnectionMultiplexer.ConnectAsync(privateServer.Configuration + ",allowAdmin=true");
        var options = RedisFixture.NewOptions();
        options.StoreResults = false;
        var store = new RedisIdempotencyStore(connection, options);
        var claims = Enumerable.Range(0, 50).Select(i => Claim($"w-{i}")).ToArray();
        var transaction = (RedisIdempotencyTransaction)await store.BeginAsync(Ct);
        await transaction.ClaimBatchAsync(claims, Ct);
        var server = connection.GetServer(connection.GetEndPoints()[0]);
        var claimed = await store.Database.StringGetAsync(claims.Select(c => store.GetKey(c.HandlerName, c.Key)).ToArray());
        var before = await WriteCountAsync(server);

        await transaction.CommitAsync(claims.Select(c => new CompletionRecord(c, TimeSpan.Zero, new byte[] { 1 })).ToArray(), [], Ct);

        Assert.Equal(1, await WriteCountAsync(server) - before); // the status SET, on a server of this test's own
        Assert.Equal(claimed, await store.Database.StringGetAsync(claims.Select(c => store.GetKey(c.HandlerName, c.Key)).ToArray()));
        foreach (var claim in claims)
        {
            Assert.NotNull(await store.FindAsync(claim.HandlerName, claim.Key));
        }

        Assert.Equal("D", (string?)await store.Database.StringGetAsync($"{store.Options.KeyPrefix}:lease:{transaction.LeaseToken}"));
        var statusTtl = await store.Database.KeyTimeToLiveAsync($"{store.Options.KeyPrefix}:lease:{transaction.LeaseToken}");
        Assert.True(statusTtl > store.Options.Retention - TimeSpan.FromMinutes(1), "a committed status must outlive the keys that refer to it");
        await transaction.DisposeAsync();
    }

    /// <summary>Calls of SET and DEL the server has run (INFO commandstats), inside scripts or not.</summary>
    private static async Task<long> WriteCountAsync(IServer server)
    {
        var stats = await server.InfoAsync("commandstats");
        return stats.SelectMany(g => g).Where(p => p.Key is "cmdstat_set" or "cmdstat_del")
            .Sum(p => long.Parse(p.Value.Split(',')[0].Split('=')[1], System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public async Task Stale_worker_without_redis_writes_is_refused_when_another_worker_completed_the_key()
    {
        var store = redis.CreateStore(o => o.LeaseDuration = TimeSpan.FromMilliseconds(200));
        var claim = Claim("email-1");
        var stale = await store.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await stale.ClaimAsync(claim, Ct)).Status);
        await Task.Delay(400, Ct);

        var fresh = await store.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await fresh.ClaimAsync(claim, Ct)).Status);
        await fresh.CommitAsync([new CompletionRecord(claim, TimeSpan.Zero, Encoding.UTF8.GetBytes("sent by B"))], [], Ct);

        await Assert.ThrowsAsync<ClaimLostException>(async () => await stale.CommitAsync([new CompletionRecord(claim, TimeSpan.Zero, Encoding.UTF8.GetBytes("sent by A"))], [], Ct));
        Assert.Equal("sent by B", Encoding.UTF8.GetString((await store.FindAsync("orders", "email-1"))!.Value.Result!));
    }

    [Fact]
    public async Task Redis_held_state_10000_messages_with_20_percent_duplicates_count_each_unique_key_once()
    {
        var store = redis.CreateStore();
        var prefix = store.Options.KeyPrefix;
        var runs = 0;
        var processor = new IdempotentProcessor(store, CountInRedis(prefix, () => Interlocked.Increment(ref runs)), Options());
        var random = new Random(42);
        var messages = Enumerable.Range(0, 8_000).Select(i => Message($"m-{i}")).ToList();
        messages.AddRange(Enumerable.Range(0, 2_000).Select(_ => Redelivery($"m-{random.Next(8_000)}")));
        messages = [.. messages.OrderBy(_ => random.Next())];

        var results = await ProcessUntilCommittedAsync(processor, messages, batchSize: 100, workers: 4, TimeSpan.FromSeconds(60));

        Assert.Equal(10_000, results.Count);
        Assert.Equal(8_000, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(2_000, results.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(8_000, runs);
        Assert.Equal(8_000, (long)await store.Database.StringGetAsync($"{prefix}:state:count"));
        Assert.Equal(8_000, await store.Database.SetLengthAsync($"{prefix}:state:keys"));
        await redis.DeletePrefixAsync(prefix);
    }

    [Fact]
    public async Task Completed_keys_survive_a_redis_crash_and_restart_with_appendonly_and_cause_no_duplicate_effects()
    {
        await using var server = await PrivateRedisServer.StartAsync();
        await using var connection = await ConnectionMultiplexer.ConnectAsync(server.Configuration);
        var store = new RedisIdempotencyStore(connection, RedisFixture.NewOptions());
        var prefix = store.Options.KeyPrefix;
        var processor = new IdempotentProcessor(store, CountInRedis(prefix), Options());
        var messages = Enumerable.Range(0, 1_000).Select(i => Message($"r-{i}")).ToList();

        var before = await ProcessUntilCommittedAsync(processor, messages[..600], batchSize: 50, workers: 2, TimeSpan.FromSeconds(30));
        Assert.All(before, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));

        // SIGKILL: no shutdown save; only the append-only file (fsync always) holds the data.
        await server.KillAsync();
        var during = await processor.ProcessAsync(Message("r-0"), Ct);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, during.Outcome);
        Assert.False(await store.PingAsync(Ct));
        await server.StartAgainAsync();
        await WaitUntilAsync(async () => await store.PingAsync(Ct), TimeSpan.FromSeconds(15), "the store's connection did not come back after the restart");

        // Everything again (the broker redelivers what it never saw acked): 600 duplicates, 400 new.
        var after = await ProcessUntilCommittedAsync(processor, messages, batchSize: 50, workers: 2, TimeSpan.FromSeconds(30));
        Assert.Equal(600, after.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal(400, after.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(1_000, (long)await store.Database.StringGetAsync($"{prefix}:state:count"));
        Assert.Equal(1_000, await store.Database.SetLengthAsync($"{prefix}:state:keys"));
    }

    [Fact]
    public async Task Records_expire_after_the_retention_ttl_and_the_key_is_processed_again()
    {
        var options = RedisFixture.NewOptions();
        options.RetentionFloor = TimeSpan.FromMilliseconds(100); // tests only: the public floor is 24 h
        options.Retention = TimeSpan.FromMilliseconds(1_500);
        options.LeaseDuration = TimeSpan.FromMilliseconds(500);
        var store = new RedisIdempotencyStore(redis.Connection, options);
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => { Interlocked.Increment(ref runs); return ValueTask.CompletedTask; }), Options());

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("ttl"), Ct)).Outcome);
        var ttl = await store.Database.KeyTimeToLiveAsync(store.GetKey("orders", "ttl"));
        Assert.NotNull(ttl);
        Assert.InRange(ttl.Value, TimeSpan.FromMilliseconds(500), TimeSpan.FromMilliseconds(1_500));
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Message("ttl"), Ct)).Outcome);

        await WaitUntilAsync(async () => !await store.Database.KeyExistsAsync(store.GetKey("orders", "ttl")), TimeSpan.FromSeconds(5), "the record did not expire");
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("ttl"), Ct)).Outcome);
        Assert.Equal(2, runs);
    }

    [Fact]
    public async Task Default_retention_is_seven_days_on_the_record()
    {
        var store = redis.CreateStore();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options());
        await processor.ProcessAsync(Message("week"), Ct);
        var ttl = await store.Database.KeyTimeToLiveAsync(store.GetKey("orders", "week"));
        Assert.InRange(ttl!.Value, TimeSpan.FromDays(7) - TimeSpan.FromMinutes(1), TimeSpan.FromDays(7));
        Assert.Null(await store.FindLeaseTokenAsync("orders", "week"));
    }

    [Fact]
    public async Task The_start_up_retention_check_compares_the_broker_horizon_with_the_redis_ttl_not_the_handlers_option()
    {
        // The handler asks for 14 days (an SQS queue's retention), the Redis store keeps keys for its own 7 days.
        var store = redis.CreateStore(o => o.Retention = TimeSpan.FromDays(7));
        var options = new IdempotencyOptions { HandlerName = "orders", Retention = TimeSpan.FromDays(14) };
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options);
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("ttl-1"), Ct)).Outcome);
        var ttl = await store.Database.KeyTimeToLiveAsync(store.GetKey("orders", "ttl-1"));
        Assert.InRange(ttl!.Value, TimeSpan.FromDays(7) - TimeSpan.FromHours(1), TimeSpan.FromDays(7));

        Assert.Equal(TimeSpan.FromDays(7), ((IIdempotencyStore)store).EnforcedRetention);
        var warning = RetentionGuard.Check(processor.Options, TimeSpan.FromDays(14), "queue q MessageRetentionPeriod=1209600s", processor.Store);
        Assert.NotNull(warning);
        Assert.Contains("redis store", warning, StringComparison.Ordinal);
        Assert.Null(RetentionGuard.Check(processor.Options, TimeSpan.FromDays(7), "queue q MessageRetentionPeriod=604800s", processor.Store));
    }

    [Fact]
    public async Task Key_prefixes_and_handler_names_isolate_keys()
    {
        var billing = redis.CreateStore();
        var shipping = redis.CreateStore();
        var runs = 0;
        var handler = IdempotentHandler.Create((_, _) => { Interlocked.Increment(ref runs); return ValueTask.CompletedTask; });

        Assert.Equal(ProcessingOutcome.Processed, (await new IdempotentProcessor(billing, handler, Options("invoices")).ProcessAsync(Message("k-1"), Ct)).Outcome);
        Assert.Equal(ProcessingOutcome.Processed, (await new IdempotentProcessor(billing, handler, Options("receipts")).ProcessAsync(Message("k-1"), Ct)).Outcome);
        Assert.Equal(ProcessingOutcome.Processed, (await new IdempotentProcessor(shipping, handler, Options("invoices")).ProcessAsync(Message("k-1"), Ct)).Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, (await new IdempotentProcessor(billing, handler, Options("invoices")).ProcessAsync(Message("k-1"), Ct)).Outcome);
        Assert.Equal(3, runs);
        Assert.StartsWith(billing.Options.KeyPrefix + ":{invoices|k-1}", (string)billing.GetKey("invoices", "k-1")!);
    }

    [Theory]
    [InlineData("", 7 * 24, 30_000, "KeyPrefix")]
    [InlineData("app{x}", 7 * 24, 30_000, "KeyPrefix")]
    [InlineData("app", 0, 30_000, "Retention must be positive")]
    [InlineData("app", -1, 30_000, "Retention must be positive")]
    [InlineData("app", 1, 30_000, "Retention must be at least 24 hours")]
    [InlineData("app", 7 * 24, 0, "LeaseDuration must be positive")]
    [InlineData("app", 7 * 24, -5, "LeaseDuration must be positive")]
    public void Bad_options_fail_at_start_up_with_the_setting_named(string prefix, int retentionHours, int leaseMilliseconds, string expected)
    {
        var options = new RedisIdempotencyStoreOptions { KeyPrefix = prefix, Retention = TimeSpan.FromHours(retentionHours), LeaseDuration = TimeSpan.FromMilliseconds(leaseMilliseconds) };
        var error = Assert.Throws<ArgumentException>(() => new RedisIdempotencyStore(redis.Connection, options));
        Assert.Contains(expected, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Handler_failure_releases_the_lease_and_the_redelivery_runs_again()
    {
        var store = redis.CreateStore();
        var fail = true;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
        {
            _ = context.GetRedisTransaction().StringIncrementAsync($"{store.Options.KeyPrefix}:state:count");
            return fail ? throw new InvalidOperationException("boom") : ValueTask.CompletedTask;
        }), Options());

        Assert.Equal(ProcessingOutcome.Failed, (await processor.ProcessAsync(Message("f-1"), Ct)).Outcome);
        Assert.False(await store.Database.KeyExistsAsync(store.GetKey("orders", "f-1")));
        Assert.False(await store.Database.KeyExistsAsync($"{store.Options.KeyPrefix}:state:count"));

        fail = false;
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("f-1"), Ct)).Outcome);
        Assert.Equal(1, (int)await store.Database.StringGetAsync($"{store.Options.KeyPrefix}:state:count"));
    }

    [Fact]
    public async Task External_effect_runs_once_and_a_duplicate_gets_the_stored_result_and_fingerprint_check()
    {
        var store = redis.CreateStore();
        var calls = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, _) =>
        {
            Interlocked.Increment(ref calls); // the "HTTP call"
            context.Result = Encoding.UTF8.GetBytes("receipt-42");
            return ValueTask.CompletedTask;
        }), Options(policy: PayloadMismatchPolicy.Fail));

        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("pay-1"), Ct)).Outcome);
        var duplicate = await processor.ProcessAsync(Message("pay-1"), Ct);
        var mismatch = await processor.ProcessAsync(Message("pay-1", "{\"amount\":6}"), Ct);

        Assert.Equal(ProcessingOutcome.Duplicate, duplicate.Outcome);
        Assert.Equal("receipt-42", Encoding.UTF8.GetString(duplicate.StoredResult!.Value.Span));
        Assert.Equal(ProcessingOutcome.PayloadMismatch, mismatch.Outcome);
        Assert.Equal(1, calls);
    }

    [Fact]
    public async Task Results_are_not_stored_when_store_results_is_off()
    {
        var store = redis.CreateStore(o => o.StoreResults = false);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, _) => { context.Result = new byte[] { 1 }; return ValueTask.CompletedTask; }), Options());
        await processor.ProcessAsync(Message("nr"), Ct);
        var duplicate = await processor.ProcessAsync(Message("nr"), Ct);
        Assert.Equal(ProcessingOutcome.Duplicate, duplicate.Outcome);
        Assert.Null(duplicate.StoredResult);
    }

    [Fact]
    public async Task Outbox_messages_are_appended_to_the_stream_in_the_same_exec_as_the_state()
    {
        var store = redis.CreateStore();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
        {
            _ = context.GetRedisTransaction().StringIncrementAsync($"{store.Options.KeyPrefix}:state:count");
            context.AddOutgoing(new OutboxMessage("shipments", context.Key, Encoding.UTF8.GetBytes("ship it"), new Dictionary<string, string> { ["traceparent"] = "00-x" }));
            return ValueTask.CompletedTask;
        }), Options());

        await processor.ProcessAsync(Message("o-1"), Ct);
        await processor.ProcessAsync(Message("o-1"), Ct);

        var entries = await store.Database.StreamRangeAsync(store.OutboxStreamKey);
        var entry = Assert.Single(entries);
        Assert.Equal("shipments", (string?)entry["destination"]);
        Assert.Equal("o-1", (string?)entry["key"]);
        Assert.Equal("ship it", (string?)entry["payload"]);
        Assert.Contains("traceparent", (string?)entry["headers"], StringComparison.Ordinal);
    }

    [Fact]
    public async Task Unreachable_redis_is_store_unavailable_and_ping_says_so()
    {
        await using var connection = await ConnectionMultiplexer.ConnectAsync("127.0.0.1:1,abortConnect=false,connectTimeout=200");
        var store = new RedisIdempotencyStore(connection, RedisFixture.NewOptions());
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), Options());

        var result = await processor.ProcessAsync(Message("down"), Ct);

        Assert.Equal(ProcessingOutcome.StoreUnavailable, result.Outcome);
        Assert.False(result.IsCommitted);
        Assert.False(await store.PingAsync(Ct));
        Assert.True(await redis.CreateStore().PingAsync(Ct));
    }

    [Fact]
    public async Task A_full_redis_under_noeviction_is_store_unavailable_and_nothing_is_lost()
    {
        await using var server = await PrivateRedisServer.StartAsync();
        await using var connection = await ConnectionMultiplexer.ConnectAsync(server.Configuration + ",allowAdmin=true");
        var store = new RedisIdempotencyStore(connection, RedisFixture.NewOptions());
        var processor = new IdempotentProcessor(store, CountInRedis(store.Options.KeyPrefix), Options());
        var admin = connection.GetServer(connection.GetEndPoints()[0]);
        await admin.ConfigSetAsync("maxmemory-policy", "noeviction");
        await admin.ConfigSetAsync("maxmemory", "1"); // below what the server already uses: every write is refused with OOM

        var full = await processor.ProcessAsync(Message("oom-1"), Ct);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, full.Outcome); // pause and retry, never a poison message
        Assert.False(full.IsCommitted);

        await admin.ConfigSetAsync("maxmemory", "0");
        Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message("oom-1"), Ct)).Outcome);
        Assert.Equal(1, (int)await store.Database.StringGetAsync($"{store.Options.KeyPrefix}:state:count"));
    }

    [Fact]
    public async Task A_handler_command_that_fails_inside_exec_is_reported_failed_not_processed_and_the_key_stays_recorded()
    {
        var store = redis.CreateStore();
        var prefix = store.Options.KeyPrefix;
        await store.Database.StringSetAsync($"{prefix}:not-a-hash", "x");
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((context, ct) =>
        {
            runs++;
            var transaction = context.GetRedisTransaction();
            _ = transaction.StringIncrementAsync($"{prefix}:good");
            _ = transaction.HashIncrementAsync($"{prefix}:not-a-hash", "f", 1); // WRONGTYPE, at EXEC time
            return ValueTask.CompletedTask;
        }), Options());

        var first = await processor.ProcessAsync(Message("w1"), Ct);

        // Redis applied the other command and the completion: the failure is reported, not passed off as Processed.
        Assert.Equal(ProcessingOutcome.Failed, first.Outcome);
        var failed = Assert.IsType<RedisCommandFailedException>(first.Exception);
        Assert.Equal(["w1"], failed.Keys);
        Assert.StartsWith("WRONGTYPE", Assert.Single(failed.Errors).Message, StringComparison.Ordinal);
        Assert.Equal(1, (int)await store.Database.StringGetAsync($"{prefix}:good"));
        Assert.Equal(RedisType.String, await store.Database.KeyTypeAsync($"{prefix}:not-a-hash"));
        Assert.NotNull(await store.FindAsync("orders", "w1"));

        // The key is recorded: the redelivery is a duplicate and the handler does not run again.
        Assert.Equal(ProcessingOutcome.Duplicate, (await processor.ProcessAsync(Redelivery("w1"), Ct)).Outcome);
        Assert.Equal(1, runs);
        Assert.Equal(1, (int)await store.Database.StringGetAsync($"{prefix}:good"));
    }

    [Fact]
    public async Task Cancelled_claim_throws_and_takes_no_lease()
    {
        var store = redis.CreateStore();
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        var transaction = await store.BeginAsync(Ct);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await transaction.ClaimAsync(Claim("c"), cancelled.Token));
        Assert.False(await store.Database.KeyExistsAsync(store.GetKey("orders", "c")));
    }

    internal static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Waited {timeout}: {what}.");
            }

            await Task.Delay(50);
        }
    }
}
