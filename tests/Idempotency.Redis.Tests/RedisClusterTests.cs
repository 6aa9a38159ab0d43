using System.Collections.Concurrent;
using System.Diagnostics;
using Idempotency.Storage;
using Idempotency.TestSupport;
using StackExchange.Redis;
using static Idempotency.Redis.Tests.TestMessages;

namespace Idempotency.Redis.Tests;

/// <summary>
/// The Redis store on a real Redis Cluster (3 masters + 3 replicas, <c>scripts/services.sh cluster-up</c>): single
/// messages, batches spanning many hash slots, and a master killed mid-run.
/// </summary>
[Collection(RedisClusterCollection.Name)] // one at a time: a failover test kills a primary of the shared cluster
public sealed class RedisClusterTests(RedisClusterFixture cluster, RedisFixture standalone) : IClassFixture<RedisClusterFixture>, IClassFixture<RedisFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Redis-held state on a cluster: one counter per key, in the key's own slot, written in the store's MULTI/EXEC.</summary>
    private static IIdempotentMessageHandler CountColocated(Action<MessageContext>? onRun = null) =>
        IdempotentHandler.Create((context, ct) =>
        {
            onRun?.Invoke(context);
            _ = context.GetRedisTransaction().StringIncrementAsync(context.GetColocatedRedisKey("fx"));
            return ValueTask.CompletedTask;
        });

    private static async Task<(int Keys, long Total, long Max)> ReadEffectsAsync(RedisIdempotencyStore store, IEnumerable<string> keys)
    {
        var reads = keys.Select(k => store.Database.StringGetAsync(store.GetColocatedKey("orders", k, "fx"))).ToArray();
        var values = (await Task.WhenAll(reads)).Where(v => v.HasValue).Select(v => (long)v).ToList();
        return (values.Count, values.Sum(), values.Count == 0 ? 0 : values.Max());
    }

    [Fact]
    public async Task Sixteen_concurrent_claims_of_one_key_have_exactly_one_winner()
    {
        var store = cluster.CreateStore();
        Assert.True(store.KeySpace.IsCluster);
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

    [Theory]
    [InlineData(1)]
    [InlineData(50)]
    public async Task Many_messages_with_duplicates_from_four_workers_give_one_effect_per_key(int batchSize)
    {
        var store = cluster.CreateStore();
        var processor = new IdempotentProcessor(store, CountColocated(), Options());
        var unique = Enumerable.Range(0, 2_000).Select(i => $"k{i}").ToList();
        var messages = unique.Concat(unique.Where((_, i) => i % 5 == 0)).Select(k => Message(k)).OrderBy(_ => Random.Shared.Next()).ToList();

        var results = await ProcessUntilCommittedAsync(processor, messages, batchSize, workers: 4, TimeSpan.FromMinutes(2));

        Assert.Equal(unique.Count, results.Count(r => r.Outcome == ProcessingOutcome.Processed));
        Assert.Equal(messages.Count - unique.Count, results.Count(r => r.Outcome == ProcessingOutcome.Duplicate));
        Assert.Equal((unique.Count, (long)unique.Count, 1L), await ReadEffectsAsync(store, unique));
    }

    /// <summary>
    /// The same batch on a single server and on the cluster: 400 keys (about 400 slots), 50 of them committed before,
    /// 10 held by another transaction, one whose handler fails. Every message gets the outcome it gets on the single
    /// server; on the cluster each slot group got its own committed status key.
    /// </summary>
    [Fact]
    public async Task A_batch_spanning_hundreds_of_slots_has_the_outcome_per_message_of_a_single_server()
    {
        var onCluster = await RunScriptedBatchAsync(cluster.CreateStore());
        var onServer = await RunScriptedBatchAsync(standalone.CreateStore());

        Assert.Equal(onServer.Outcomes, onCluster.Outcomes);
        Assert.Equal(339, onCluster.Outcomes.Count(o => o == ProcessingOutcome.Processed));
        Assert.Equal(1, onCluster.Outcomes.Count(o => o == ProcessingOutcome.Failed));
        Assert.Equal(50, onCluster.Outcomes.Count(o => o == ProcessingOutcome.Duplicate));
        Assert.Equal(10, onCluster.Outcomes.Count(o => o == ProcessingOutcome.InProgress));
        Assert.Equal(onServer.Effects, onCluster.Effects);
        Assert.True(onCluster.Slots > 300, $"the batch spans {onCluster.Slots} slots");
    }

    private async Task<(List<ProcessingOutcome> Outcomes, (int, long, long) Effects, int Slots)> RunScriptedBatchAsync(RedisIdempotencyStore store)
    {
        var processor = new IdempotentProcessor(store, CountColocated(context =>
        {
            if (context.Key == "k7")
            {
                throw new InvalidOperationException("poison");
            }
        }), Options());
        var keys = Enumerable.Range(0, 400).Select(i => $"k{i}").ToList();
        foreach (var key in keys.Skip(100).Take(50))
        {
            Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message(key), Ct)).Outcome);
        }

        await using var holder = await store.BeginAsync(Ct);
        var held = await holder.ClaimBatchAsync([.. keys.Skip(200).Take(10).Select(k => Claim(k))], Ct);
        Assert.All(held, r => Assert.Equal(ClaimStatus.Claimed, r.Status));

        var results = await processor.ProcessBatchAsync([.. keys.Select(k => Message(k))], Ct);
        var effects = await ReadEffectsAsync(store, keys);
        var slots = keys.Select(k => store.Connection.HashSlot(store.GetKey("orders", k))).Distinct().Count();
        return ([.. results.Select(r => r.Outcome)], effects, slots);
    }

    /// <summary>
    /// A batch whose lease expired, with one key taken over by another worker meanwhile: that key's slot group is refused
    /// (nothing of it written), every other group commits; the batch reports in progress, and its redelivery finds the
    /// committed keys as duplicates and the taken key held by the other worker. One effect per key either way.
    /// </summary>
    [Fact]
    public async Task A_slot_group_taken_over_is_refused_while_the_other_groups_commit()
    {
        var store = cluster.CreateStore(o => o.LeaseDuration = TimeSpan.FromMilliseconds(500));
        var keys = Enumerable.Range(0, 20).Select(i => $"g{i}").ToList();
        await using var slow = (RedisIdempotencyTransaction)await store.BeginAsync(Ct);
        var claims = keys.Select(k => Claim(k)).ToList();
        Assert.All(await slow.ClaimBatchAsync(claims, Ct), r => Assert.Equal(ClaimStatus.Claimed, r.Status));
        foreach (var key in keys)
        {
            _ = slow.GetRedisTransaction("orders", key).StringIncrementAsync(store.GetColocatedKey("orders", key, "fx"));
        }

        await Task.Delay(1_000, Ct); // every group's lease expired
        await using (var other = await store.BeginAsync(Ct))
        {
            Assert.Equal(ClaimStatus.Claimed, (await other.ClaimAsync(Claim("g3"), Ct)).Status); // takes g3 over
        }

        // With handler writes, a group whose lease expired is refused whatever its keys hold (MULTI/EXEC's condition
        // is the status); without, only the group with the taken key would be. Either way nothing of a refused group lands.
        await Assert.ThrowsAsync<ClaimLostException>(async () => await slow.CommitAsync([.. claims.Select(c => new CompletionRecord(c, TimeSpan.Zero))], [], Ct));
        Assert.Equal((0, 0L, 0L), await ReadEffectsAsync(store, keys));

        // Without handler writes: the expired groups whose keys are still ours commit, the one with g3 does not.
        var store2 = cluster.CreateStore(o => o.LeaseDuration = TimeSpan.FromMilliseconds(500));
        await using var slow2 = await store2.BeginAsync(Ct);
        Assert.All(await slow2.ClaimBatchAsync(claims, Ct), r => Assert.Equal(ClaimStatus.Claimed, r.Status));
        await Task.Delay(1_000, Ct);
        await using var other2 = await store2.BeginAsync(Ct);
        Assert.Equal(ClaimStatus.Claimed, (await other2.ClaimAsync(Claim("g3"), Ct)).Status);
        await Assert.ThrowsAsync<ClaimLostException>(async () => await slow2.CommitAsync([.. claims.Select(c => new CompletionRecord(c, TimeSpan.Zero))], [], Ct));
        await slow2.RollbackAsync(Ct);

        var g3Slot = store2.Connection.HashSlot(store2.GetKey("orders", "g3"));
        foreach (var key in keys)
        {
            var sameGroup = store2.Connection.HashSlot(store2.GetKey("orders", key)) == g3Slot;
            Assert.Equal(!sameGroup, await store2.FindAsync("orders", key) is not null);
        }

        Assert.Null(await store2.FindAsync("orders", "g3"));
        Assert.NotNull(await store2.FindLeaseTokenAsync("orders", "g3")); // still the other worker's
    }

    [Fact]
    public async Task A_cluster_whose_first_seed_node_is_down_is_still_recognised_as_a_cluster()
    {
        var options = ConfigurationOptions.Parse(cluster.Configuration);
        options.EndPoints.Insert(0, new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 1)); // nothing listens on port 1
        options.AbortOnConnectFail = false;
        options.ConnectTimeout = 1_000;
        await using var connection = await ConnectionMultiplexer.ConnectAsync(options);
        var store = cluster.CreateStore(connection: connection);

        Assert.True(store.KeySpace.IsCluster);
        var processor = new IdempotentProcessor(store, CountColocated(), Options());
        var results = await processor.ProcessBatchAsync([.. Enumerable.Range(0, 20).Select(i => Message($"s{i}"))], Ct);
        Assert.All(results, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));
    }

    [Fact]
    public async Task Outgoing_messages_on_a_cluster_are_refused_with_a_clear_message()
    {
        var store = cluster.CreateStore();
        await using var transaction = await store.BeginAsync(Ct);
        var claim = Claim("out");
        await transaction.ClaimAsync(claim, Ct);
        var error = await Assert.ThrowsAsync<NotSupportedException>(async () =>
            await transaction.CommitAsync([new CompletionRecord(claim, TimeSpan.Zero)], [new Outbox.OutboxMessage("d", "out", new byte[] { 1 })], Ct));
        Assert.Contains("Redis Cluster", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task WaitForReplicas_commits_once_every_replica_acknowledged()
    {
        var store = cluster.CreateStore(o => o.WaitForReplicas = 1);
        var processor = new IdempotentProcessor(store, CountColocated(), Options());
        var keys = Enumerable.Range(0, 100).Select(i => $"w{i}").ToList();
        var results = await processor.ProcessBatchAsync([.. keys.Select(k => Message(k))], Ct);
        Assert.All(results, r => Assert.Equal(ProcessingOutcome.Processed, r.Outcome));

        var tooMany = cluster.CreateStore(o => { o.KeyPrefix = store.Options.KeyPrefix; o.WaitForReplicas = 2; o.ReplicaWaitTimeout = TimeSpan.FromMilliseconds(50); });
        var refused = await new IdempotentProcessor(tooMany, CountColocated(), Options()).ProcessAsync(Message("w-two"), Ct);
        Assert.Equal(ProcessingOutcome.StoreUnavailable, refused.Outcome); // one replica per master: never 2
        Assert.Contains("1 of the 2 replicas", refused.Exception!.Message, StringComparison.Ordinal);
        var retried = await new IdempotentProcessor(store, CountColocated(), Options()).ProcessAsync(Message("w-two"), Ct);
        Assert.Equal(ProcessingOutcome.Duplicate, retried.Outcome); // the commit was applied; only the ack waited
    }

    /// <summary>
    /// 4 workers process 3,000 keys (+20% re-sent copies) in batches of 20; once a third is acknowledged the master of
    /// a slot is SIGKILLed and its replica promoted. Every message is eventually acknowledged; no key has two effects;
    /// with <c>WaitForReplicas = 1</c> no acknowledged key lost its effect. Without it the loss (acknowledged, then lost
    /// with the master) is reported, not asserted: it is the writes the replica had not received. Once the replica is
    /// promoted, the killed node is started again (as a supervisor would) and rejoins as its replica: until then the
    /// promoted master has no replica, and with <c>WaitForReplicas = 1</c> its slots cannot acknowledge a commit.
    /// </summary>
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    public async Task A_master_killed_mid_run_loses_no_acknowledged_effect_with_WaitForReplicas(int waitForReplicas)
    {
        await cluster.WaitHealthyAsync(TimeSpan.FromSeconds(60));
        await using var connection = await cluster.ConnectAsync();
        var store = cluster.CreateStore(o => { o.WaitForReplicas = waitForReplicas; o.LeaseDuration = TimeSpan.FromSeconds(2); }, connection);
        var processor = new IdempotentProcessor(store, CountColocated(), Options());
        var unique = Enumerable.Range(0, 3_000).Select(i => $"f{i}").ToList();
        var messages = unique.Concat(unique.Where((_, i) => i % 5 == 0)).Select(k => Message(k)).OrderBy(_ => Random.Shared.Next()).ToList();
        var queue = new ConcurrentQueue<IncomingMessage>(messages);
        var acked = new ConcurrentDictionary<string, byte>();
        var ackedCount = 0;
        var retries = 0;
        var killedPort = 0;
        List<(int From, int To)>? killedSlots = null;
        var killAt = messages.Count / 3;
        var clock = Stopwatch.StartNew();
        TimeSpan killedAt = default, firstAckAfterKill = default, promotedAt = default, rejoinedAt = default;
        Task? restart = null;

        try
        {
            await Task.WhenAll(Enumerable.Range(0, 4).Select(_ => Task.Run(async () =>
            {
                var batch = new List<IncomingMessage>(20);
                while (true)
                {
                    batch.Clear();
                    while (batch.Count < 20 && queue.TryDequeue(out var next))
                    {
                        batch.Add(next);
                    }

                    if (batch.Count == 0)
                    {
                        return;
                    }

                    Assert.True(clock.Elapsed < TimeSpan.FromMinutes(3), "messages still unacknowledged after 3 minutes");
                    var redeliver = false;
                    var started = clock.Elapsed;
                    foreach (var result in await processor.ProcessBatchAsync(batch, Ct))
                    {
                        if (result.IsCommitted)
                        {
                            acked[result.Message.Key!] = 0;
                            if (Interlocked.Increment(ref ackedCount) == killAt)
                            {
                                var victim = store.GetKey("orders", result.Message.Key!);
                                killedPort = await cluster.MasterPortOfAsync(victim);
                                var ranges = (await cluster.NodesAsync()).Single(n => n.Port == killedPort).Slots;
                                cluster.KillNode(killedPort);
                                killedAt = clock.Elapsed;
                                killedSlots = ranges;
                                restart = Task.Run(async () =>
                                {
                                    await WaitPromotedAsync(killedPort, ranges[0].From);
                                    promotedAt = clock.Elapsed;
                                    await cluster.RestartNodeAsync(killedPort);
                                    rejoinedAt = clock.Elapsed;
                                });
                            }
                            else if (killedSlots is { } slots && firstAckAfterKill == default && started > killedAt
                                && store.Connection.HashSlot(store.GetKey("orders", result.Message.Key!)) is var slot && slots.Any(r => slot >= r.From && slot <= r.To))
                            {
                                firstAckAfterKill = clock.Elapsed; // a key of the killed master's slots, processed after the kill
                            }
                        }
                        else
                        {
                            // A failover may also take a lease over under a commit in flight: LeaseLost, tried again like InProgress.
                            Assert.True(result.Outcome is ProcessingOutcome.StoreUnavailable or ProcessingOutcome.InProgress or ProcessingOutcome.LeaseLost, $"{result.Message.Key}: {result.Outcome} {result.Exception}");
                            queue.Enqueue(result.Message); // not acked: the broker redelivers it
                            Interlocked.Increment(ref retries);
                            redeliver = true;
                        }
                    }

                    if (redeliver)
                    {
                        await Task.Delay(50, Ct);
                    }
                }
            })));
        }
        finally
        {
            if (restart is not null)
            {
                await restart; // the killed node is back as a replica: the cluster is whole again for the next test
            }
        }

        var elapsed = clock.Elapsed;
        var (keys, total, max) = await ReadEffectsAsync(store, unique);
        var lost = unique.Count - keys;
        TestContext.Current.TestOutputHelper!.WriteLine(
            $"WaitForReplicas={waitForReplicas}: {messages.Count} messages ({unique.Count} unique) in {elapsed.TotalSeconds:0.0} s, " +
            $"master :{killedPort} SIGKILLed at {killedAt.TotalSeconds:0.0} s, replica promoted at {promotedAt.TotalSeconds:0.0} s, " +
            $"killed node back as replica at {rejoinedAt.TotalSeconds:0.0} s, its slots acknowledged again at {firstAckAfterKill.TotalSeconds:0.0} s, " +
            $"{retries} redeliveries; effects: {keys} keys, total {total}, max {max}; acknowledged but lost: {lost}");

        Assert.Equal(unique.Count, acked.Count);
        Assert.True(max <= 1, $"a key has {max} effects");
        if (waitForReplicas > 0)
        {
            Assert.Equal((unique.Count, (long)unique.Count), (keys, total));
        }
    }

    private async Task WaitPromotedAsync(int killedPort, int slot)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!(await cluster.NodesAsync()).Any(n => n.Port != killedPort && n.Role == "master" && n.Slots.Any(r => slot >= r.From && slot <= r.To)))
        {
            Assert.True(DateTime.UtcNow < deadline, $"no replica of :{killedPort} was promoted within 60 s");
            await Task.Delay(100);
        }
    }
}
