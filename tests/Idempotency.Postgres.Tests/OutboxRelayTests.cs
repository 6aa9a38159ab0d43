using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using Dapper;
using Idempotency.Outbox;
using Idempotency.Postgres.Outbox;
using Idempotency.TestSupport;

namespace Idempotency.Postgres.Tests;

/// <summary>The PostgreSQL outbox relay's mechanics, with an in-process publisher that records what it was given.</summary>
public sealed class OutboxRelayTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Handler_that_throws_writes_no_outbox_row_and_nothing_is_published()
    {
        var store = await db.CreateStoreAsync();
        var processor = Sender(store, "throws", fail: key => key == "bad");

        var results = await processor.ProcessBatchAsync([Message("good"), Message("bad")], Ct);

        Assert.Equal(ProcessingOutcome.Processed, results[0].Outcome);
        Assert.Equal(ProcessingOutcome.Failed, results[1].Outcome);
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName}"));
        var publisher = new RecordingPublisher();
        var relay = new PostgresOutboxRelay(store, publisher);
        Assert.Equal(1, await relay.RelayOnceAsync(Ct));
        Assert.Equal(["good"], publisher.Published.Select(r => r.Key));
        Assert.Equal(0, await relay.RelayOnceAsync(Ct));
    }

    [Fact]
    public async Task Relay_failing_after_publish_leaves_rows_unsent_and_republishes_the_same_message_ids_which_apply_once_downstream()
    {
        var store = await db.CreateStoreAsync();
        await Sender(store, "crash").ProcessBatchAsync(Enumerable.Range(0, 20).Select(i => Message("k" + i)).ToList(), Ct);
        var inner = new RecordingPublisher();
        var crashing = new CrashAfterPublish(inner, crashes: 1);
        var relay = new PostgresOutboxRelay(store, crashing);

        await Assert.ThrowsAsync<InvalidOperationException>(() => relay.RelayOnceAsync(Ct));
        Assert.Equal(20, inner.Published.Count);
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL"));

        Assert.Equal(20, await relay.RelayOnceAsync(Ct));
        Assert.Equal(40, inner.Published.Count);
        Assert.Equal(inner.Published.Take(20).Select(r => r.MessageId), inner.Published.Skip(20).Select(r => r.MessageId));

        // The consumer downstream keys on the MessageId: 40 deliveries, 20 effects.
        var downstream = await db.CreateStoreAsync();
        var table = await db.CreateBusinessTableAsync();
        var consumer = new IdempotentProcessor(downstream, Apply(table), new IdempotencyOptions { HandlerName = "downstream" });
        var outcomes = new List<ProcessingOutcome>();
        foreach (var record in inner.Published)
        {
            outcomes.Add((await consumer.ProcessAsync(new IncomingMessage(record.MessageId.ToString(), record.Payload), Ct)).Outcome);
        }

        Assert.Equal(20, outcomes.Count(o => o == ProcessingOutcome.Processed));
        Assert.Equal(20, outcomes.Count(o => o == ProcessingOutcome.Duplicate));
        Assert.Equal(20L, await db.ScalarAsync<long>($"SELECT sum(applied) FROM {table}"));
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {table} WHERE applied <> 1"));
    }

    [Theory]
    [InlineData(2, 1, 2)] // two relay instances, one batch at a time each
    [InlineData(1, 4, 20)] // one relay, four batches at a time (Workers), a slow broker so they overlap
    public async Task Relays_publish_every_row_and_keep_per_key_order_while_writers_commit(int relays, int workers, int publishMs)
    {
        var store = await db.CreateStoreAsync();
        var log = new RecordingPublisher(delay: TimeSpan.FromMilliseconds(publishMs));
        var options = new PostgresOutboxRelayOptions { BatchSize = 25, PollInterval = TimeSpan.FromMilliseconds(200), Workers = workers };
        var counters = Enumerable.Range(0, relays).Select(_ => new SwitchablePublisher(log)).ToList();
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var runs = counters.Select(counter => new PostgresOutboxRelay(store, counter, options).RunAsync(stop.Token)).ToArray();

        // 4 writers, each owning 5 keys, each committing 20 transactions of 5 messages (one per key, in sequence).
        const int writers = 4, keysPerWriter = 5, rounds = 20;
        await Task.WhenAll(Enumerable.Range(0, writers).Select(async w =>
        {
            var processor = Sender(store, "writer" + w, outgoing: (key, _) =>
            {
                var round = int.Parse(key.Split('-')[1], System.Globalization.CultureInfo.InvariantCulture);
                return Enumerable.Range(0, keysPerWriter).Select(k => new OutboxMessage("orders", $"w{w}k{k}", Encoding.UTF8.GetBytes(round.ToString("D3", System.Globalization.CultureInfo.InvariantCulture))));
            });
            for (var round = 0; round < rounds; round++)
            {
                Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(Message($"r-{round}"), Ct)).Outcome);
            }
        }));

        const int total = writers * keysPerWriter * rounds;
        await WaitUntilAsync(async () => await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL") == total, TimeSpan.FromSeconds(30), () => $"{log.Published.Count} of {total} published");
        await stop.CancelAsync();
        await Task.WhenAll(runs).WaitAsync(TimeSpan.FromSeconds(10), Ct);

        var published = log.Published.ToList();
        Assert.Equal(total, published.Select(r => r.MessageId).Distinct().Count());
        Assert.Equal(total, published.Count); // no failures here, so nothing twice
        Assert.All(counters, counter => Assert.True(counter.Batches > 0, $"expected every relay to publish: {string.Join(", ", counters.Select(c => c.Batches))} batches"));
        if (workers > 1)
        {
            Assert.True(log.MaxInFlight >= 2, $"expected the relay's workers to publish batches at the same time; at most {log.MaxInFlight} were in flight");
        }
        foreach (var perKey in published.GroupBy(r => r.Key))
        {
            var sequence = perKey.Select(r => Encoding.UTF8.GetString(r.Payload.Span)).ToList();
            Assert.Equal(sequence.Order(StringComparer.Ordinal), sequence);
            Assert.Equal(rounds, sequence.Count);
        }
    }

    [Fact]
    public async Task Row_whose_older_same_key_row_is_held_by_another_relay_waits_while_other_keys_go_on()
    {
        var store = await db.CreateStoreAsync();
        var processor = Sender(store, "held", outgoing: (key, _) => [new OutboxMessage("orders", key.Split('#')[0], Encoding.UTF8.GetBytes(key))]);
        foreach (var key in new[] { "A#1", "A#2", "B#1", "A#3", "C#1" })
        {
            await processor.ProcessAsync(Message(key), Ct);
        }

        // Relay 1 takes A#1 and hangs in the broker call, holding its lock.
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var slow = new RecordingPublisher(onPublish: _ => entered.TrySetResult());
        var relay1 = new PostgresOutboxRelay(store, new GatedPublisher(slow, release.Task), new PostgresOutboxRelayOptions { BatchSize = 1 });
        var first = relay1.RelayOnceAsync(Ct);
        await entered.Task.WaitAsync(TimeSpan.FromSeconds(10), Ct);

        // Relay 2 must skip A#2 and A#3 (A#1 is unsent and held) but publish B#1 and C#1.
        var fast = new RecordingPublisher();
        var relay2 = new PostgresOutboxRelay(store, fast, new PostgresOutboxRelayOptions { BatchSize = 10 });
        Assert.Equal(2, await relay2.RelayOnceAsync(Ct));
        Assert.Equal(["B#1", "C#1"], fast.Published.Select(r => Encoding.UTF8.GetString(r.Payload.Span)));

        release.SetResult();
        Assert.Equal(1, await first.WaitAsync(TimeSpan.FromSeconds(10), Ct));
        Assert.Equal(2, await relay2.RelayOnceAsync(Ct));
        Assert.Equal(["B#1", "C#1", "A#2", "A#3"], fast.Published.Select(r => Encoding.UTF8.GetString(r.Payload.Span)));
    }

    [Fact]
    public async Task Notify_wakes_the_relay_far_sooner_than_the_poll_interval()
    {
        var store = await db.CreateStoreAsync();
        var clock = Stopwatch.StartNew();
        var publishedAt = new ConcurrentDictionary<string, TimeSpan>();
        var publisher = new RecordingPublisher(onPublish: r => publishedAt[Encoding.UTF8.GetString(r.Payload.Span)] = clock.Elapsed);
        var relay = new PostgresOutboxRelay(store, publisher, new PostgresOutboxRelayOptions { PollInterval = TimeSpan.FromSeconds(30) });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var run = relay.RunAsync(stop.Token);
        var processor = Sender(store, "notify", outgoing: (key, _) => [new OutboxMessage("orders", key, Encoding.UTF8.GetBytes(key))]);

        // Warm up: the first message also waits for LISTEN to be in place.
        await processor.ProcessAsync(Message("warm"), Ct);
        await WaitUntilAsync(() => Task.FromResult(publishedAt.ContainsKey("warm")), TimeSpan.FromSeconds(10), () => "warm-up message not published");

        var committedAt = new Dictionary<string, TimeSpan>();
        for (var i = 0; i < 40; i++)
        {
            var key = "m" + i;
            await processor.ProcessAsync(Message(key), Ct);
            committedAt[key] = clock.Elapsed;
            await Task.Delay(15, Ct);
        }

        await WaitUntilAsync(() => Task.FromResult(committedAt.Keys.All(publishedAt.ContainsKey)), TimeSpan.FromSeconds(10), () => $"{publishedAt.Count} published");
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);

        // Publish can land before the commit call returns; count that as zero.
        var lags = committedAt.Select(kv => Math.Max(0, (publishedAt[kv.Key] - kv.Value).TotalMilliseconds)).Order().ToList();
        var p99 = lags[(int)Math.Ceiling(0.99 * lags.Count) - 1];
        TestContext.Current.TestOutputHelper?.WriteLine($"commit-to-publish p50 {lags[lags.Count / 2]:0.0} ms, p99 {p99:0.0} ms");
        Assert.True(p99 < 2_000, $"p99 commit-to-publish {p99:0} ms: the relay waited for polling (30 s), not NOTIFY");
    }

    [Fact]
    public async Task Publisher_down_backs_off_marks_nothing_sent_and_publishes_everything_when_back()
    {
        var store = await db.CreateStoreAsync();
        var inner = new RecordingPublisher();
        var flaky = new SwitchablePublisher(inner) { Down = true };
        var relay = new PostgresOutboxRelay(store, flaky, new PostgresOutboxRelayOptions
        {
            PollInterval = TimeSpan.FromMilliseconds(100),
            FailureBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(50), MaxDelay = TimeSpan.FromMilliseconds(200) },
        });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(Ct);
        var run = relay.RunAsync(stop.Token);
        await Sender(store, "down").ProcessBatchAsync(Enumerable.Range(0, 30).Select(i => Message("k" + i)).ToList(), Ct);

        await WaitUntilAsync(() => Task.FromResult(flaky.Failures >= 3), TimeSpan.FromSeconds(10), () => $"{flaky.Failures} failures");
        Assert.Equal(0L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL"));

        flaky.Down = false;
        await WaitUntilAsync(async () => await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL") == 0, TimeSpan.FromSeconds(10), () => $"{inner.Published.Count} published");
        await stop.CancelAsync();
        await run.WaitAsync(TimeSpan.FromSeconds(10), Ct);
        Assert.Equal(30, inner.Published.Select(r => r.MessageId).Distinct().Count());
    }

    [Fact]
    public async Task Cleanup_deletes_only_sent_rows_older_than_KeepSentFor_in_bounded_batches()
    {
        var store = await db.CreateStoreAsync();
        await Sender(store, "cleanup").ProcessBatchAsync(Enumerable.Range(0, 40).Select(i => Message("k" + i)).ToList(), Ct);
        await using (var connection = await db.DataSource.OpenConnectionAsync(Ct))
        {
            // 23 old sent rows, 10 recently sent, 7 pending (including old unsent ones, which must survive).
            var ids = (await connection.QueryAsync<long>($"SELECT id FROM {store.QualifiedOutboxTableName} ORDER BY id")).ToList();
            await connection.ExecuteAsync($"UPDATE {store.QualifiedOutboxTableName} SET sent_at = now() - interval '2 days' WHERE id = ANY(@ids)", new { ids = ids.Take(23).ToArray() });
            await connection.ExecuteAsync($"UPDATE {store.QualifiedOutboxTableName} SET sent_at = now() WHERE id = ANY(@ids)", new { ids = ids.Skip(23).Take(10).ToArray() });
            await connection.ExecuteAsync($"UPDATE {store.QualifiedOutboxTableName} SET created_at = now() - interval '3 days' WHERE id = ANY(@ids)", new { ids = ids.Skip(33).ToArray() });
        }

        var relay = new PostgresOutboxRelay(store, new RecordingPublisher(), new PostgresOutboxRelayOptions { KeepSentFor = TimeSpan.FromDays(1), CleanupBatchSize = 5 });
        Assert.Equal(23, await relay.CleanupAsync(Ct));
        Assert.Equal(10L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NOT NULL"));
        Assert.Equal(7L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedOutboxTableName} WHERE sent_at IS NULL"));
        Assert.Equal(0, await relay.CleanupAsync(Ct));
    }

    [Fact]
    public void Bad_relay_options_are_rejected_naming_the_setting()
    {
        var error = Assert.Throws<ArgumentException>(() => new PostgresOutboxRelay(
            new PostgresIdempotencyStore(db.DataSource),
            new RecordingPublisher(),
            new PostgresOutboxRelayOptions { BatchSize = 0, PollInterval = TimeSpan.Zero }));
        Assert.Contains("BatchSize", error.Message);
        Assert.Contains("PollInterval", error.Message);
    }

    internal static IncomingMessage Message(string key) => new(key, Encoding.UTF8.GetBytes("{\"id\":\"" + key + "\"}"));

    /// <summary>A processor whose handler adds outgoing messages (by default one to "orders" keyed like the input).</summary>
    internal static IdempotentProcessor Sender(PostgresIdempotencyStore store, string name, Func<string, bool>? fail = null, Func<string, MessageContext, IEnumerable<OutboxMessage>>? outgoing = null) =>
        new(store, IdempotentHandler.Create((context, _) =>
        {
            foreach (var message in outgoing?.Invoke(context.Key, context) ?? [new OutboxMessage("orders", context.Key, context.Body)])
            {
                context.AddOutgoing(message);
            }

            return fail?.Invoke(context.Key) == true ? throw new InvalidOperationException("handler failed") : ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = name, Retry = new RetryOptions { MaxAttempts = 1 } });

    private static IIdempotentMessageHandler Apply(string table) => IdempotentHandler.Create(async (context, _) =>
        await context.GetNpgsqlConnection().ExecuteAsync(
            $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
            new { id = context.Key },
            context.GetNpgsqlTransaction()));

    internal static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, Func<string> describe)
    {
        var deadline = Stopwatch.StartNew();
        while (deadline.Elapsed < timeout)
        {
            if (await condition())
            {
                return;
            }

            await Task.Delay(50);
        }

        Assert.Fail($"Timed out after {timeout.TotalSeconds:0} s: {describe()}");
    }

    /// <summary>Records every message in publish order, from any number of relays (one lock, so the log is the publish order).</summary>
    internal sealed class RecordingPublisher(TimeSpan delay = default, Action<OutboxRecord>? onPublish = null) : IOutboxPublisher
    {
        private readonly object _gate = new();
        private readonly List<OutboxRecord> _published = [];

        public IReadOnlyList<OutboxRecord> Published
        {
            get
            {
                lock (_gate)
                {
                    return _published.ToList();
                }
            }
        }

        private int _inFlight;
        private int _maxInFlight;

        /// <summary>Gets the most batches that were being published at the same time.</summary>
        public int MaxInFlight => Volatile.Read(ref _maxInFlight);

        public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            var inFlight = Interlocked.Increment(ref _inFlight);
            int max;
            while (inFlight > (max = Volatile.Read(ref _maxInFlight)) && Interlocked.CompareExchange(ref _maxInFlight, inFlight, max) != max)
            {
            }

            try
            {
                await PublishCoreAsync(messages, cancellationToken);
            }
            finally
            {
                Interlocked.Decrement(ref _inFlight);
            }
        }

        private async ValueTask PublishCoreAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            foreach (var message in messages)
            {
                lock (_gate)
                {
                    _published.Add(message);
                }

                onPublish?.Invoke(message);
            }

            if (delay > TimeSpan.Zero)
            {
                await Task.Delay(delay, cancellationToken);
            }
        }
    }

    internal sealed class GatedPublisher(IOutboxPublisher inner, Task gate) : IOutboxPublisher
    {
        public async ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            await inner.PublishAsync(messages, cancellationToken);
            await gate.WaitAsync(cancellationToken);
        }
    }

    internal sealed class SwitchablePublisher(IOutboxPublisher inner) : IOutboxPublisher
    {
        private int _failures;
        private int _batches;

        public volatile bool Down;

        public int Failures => Volatile.Read(ref _failures);

        public int Batches => Volatile.Read(ref _batches);

        public ValueTask PublishAsync(IReadOnlyList<OutboxRecord> messages, CancellationToken cancellationToken)
        {
            if (Down)
            {
                Interlocked.Increment(ref _failures);
                throw new InvalidOperationException("broker unreachable");
            }

            Interlocked.Increment(ref _batches);
            return inner.PublishAsync(messages, cancellationToken);
        }
    }
}
