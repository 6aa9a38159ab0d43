using System.Globalization;
using Amazon.SQS;
using Amazon.SQS.Model;
using Dapper;
using Idempotency.Delivery;
using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>How the worker processes a FIFO receive in these tests.</summary>
public enum FifoMode
{
    /// <summary>Natural batching, the default (<c>BatchSize</c> 10): waves, one message per group per transaction.</summary>
    Default,

    /// <summary><c>BatchSize</c> 1: each group on its own, one transaction per message.</summary>
    BatchingOff,

    /// <summary>The default with a set-based batch handler (and its per-message fallback).</summary>
    SetBased,
}

/// <summary>
/// Order within a FIFO message group under failures: a message that fails once, a poison message, several groups with
/// a failure in one. Each runs on the emulator as it is (fauxqs returns at most one message per group per receive) and
/// with receives like real SQS's (several messages of a group in one receive, see <see cref="RealFifoReceives"/>), so the
/// worker's holding back of a group behind a failed message is exercised too.
/// </summary>
public sealed class SqsFifoOrderTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    public static TheoryData<FifoMode, bool> Modes()
    {
        var data = new TheoryData<FifoMode, bool>();
        foreach (var mode in Enum.GetValues<FifoMode>())
        {
            data.Add(mode, false);
            data.Add(mode, true);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task A_message_failing_once_in_the_middle_of_its_group_takes_effect_between_its_neighbours(FifoMode mode, bool wholeGroupPerReceive)
    {
        var run = await FifoRun.CreateAsync(sqs, db, "fo-once", wholeGroupPerReceive);
        await run.SendAsync([.. Enumerable.Range(1, 6).Select(seq => ("g", seq))]);
        // m3 fails on its first delivery (in the set-based mode, in the batch handler and in the one-at-a-time fallback).
        await using var worker = run.Start(mode, (group, seq) => seq == 3 && run.Receives.Count(group, seq) == 1, maxAttempts: 5);
        await sqs.WaitProcessedAsync(run.Queue, db, run.Log, 6, Long, worker);
        await worker.StopAsync();

        Assert.Equal(new[] { 1, 2, 3, 4, 5, 6 }, await run.EffectsAsync("g"));   // send order, each once
        Assert.Equal(new[] { 1, 2, 3, 4, 5, 6 }, run.Receives.Deleted("g"));     // nothing deleted ahead of an earlier message
        Assert.Equal(1, worker.Statistics.Retried);
        Assert.Equal(0, worker.Statistics.DeadLettered);
        if (wholeGroupPerReceive)
        {
            // m4..m6 came in the receive where m3 failed: not processed, made visible behind m3, received again after it.
            Assert.All([4, 5, 6], seq => Assert.Equal(2, run.Receives.Count("g", seq)));
            Assert.True(worker.Statistics.Released >= 3, worker.Statistics.ToString());
        }

        Assert.Equal((0, 0), await sqs.CountsAsync(run.Queue));
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task A_poison_message_is_dead_lettered_before_the_rest_of_its_group_is_processed_in_order(FifoMode mode, bool wholeGroupPerReceive)
    {
        var run = await FifoRun.CreateAsync(sqs, db, "fo-poison", wholeGroupPerReceive);
        var deadLetter = await sqs.CreateQueueAsync("fo-poison-dlq", fifo: true);
        await run.SendAsync([.. Enumerable.Range(1, 6).Select(seq => ("g", seq))]);
        var attempts = 0;
        await using var worker = run.Start(mode, (group, seq) => seq == 3 && Interlocked.Increment(ref attempts) > 0, maxAttempts: 3, deadLetter);
        await sqs.WaitProcessedAsync(run.Queue, db, run.Log, 5, Long, worker);
        await worker.StopAsync();

        Assert.Equal(new[] { 1, 2, 4, 5, 6 }, await run.EffectsAsync("g"));
        Assert.Equal(new[] { 1, 2, 3, 4, 5, 6 }, run.Receives.Deleted("g"));     // m3 deleted (dead-lettered) before m4..m6
        Assert.Equal(3, attempts);
        Assert.Equal(1, worker.Statistics.DeadLettered);
        var dead = Assert.Single(await sqs.ReceiveAllAsync(deadLetter, 1, TimeSpan.FromSeconds(10)));
        Assert.Equal("3", dead.Body);
        Assert.Equal(DeliveryPolicy.HandlerFailed, dead.MessageAttributes[DeadLetterHeaders.ReasonCode].StringValue);
        if (wholeGroupPerReceive)
        {
            Assert.All([4, 5, 6], seq => Assert.True(run.Receives.Count("g", seq) >= 2, $"m{seq} held behind m3 and received again"));
        }

        Assert.Equal((0, 0), await sqs.CountsAsync(run.Queue));
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task A_failure_in_one_group_holds_only_that_group_and_every_group_keeps_its_order(FifoMode mode, bool wholeGroupPerReceive)
    {
        var run = await FifoRun.CreateAsync(sqs, db, "fo-groups", wholeGroupPerReceive);
        // Interleaved a1 b1 c1 a2 b2 c2 ...: the first receive holds the first ten.
        await run.SendAsync([.. Enumerable.Range(1, 4).SelectMany(seq => new[] { ("a", seq), ("b", seq), ("c", seq) })]);
        // b2 fails on its first delivery (in the set-based mode, in the batch handler and in the one-at-a-time fallback).
        await using var worker = run.Start(mode, (group, seq) => group == "b" && seq == 2 && run.Receives.Count(group, seq) == 1, maxAttempts: 5);
        await sqs.WaitProcessedAsync(run.Queue, db, run.Log, 12, Long, worker);
        await worker.StopAsync();

        foreach (var group in new[] { "a", "b", "c" })
        {
            Assert.Equal(new[] { 1, 2, 3, 4 }, await run.EffectsAsync(group));
            Assert.Equal(new[] { 1, 2, 3, 4 }, run.Receives.Deleted(group));
        }

        Assert.Equal(1, worker.Statistics.Retried);
        if (wholeGroupPerReceive)
        {
            // b2's retry (a second later: its visibility was set to the retry delay) comes after a and c went on past it.
            var b2 = await run.PositionAsync("b", 2);
            Assert.True(await run.PositionAsync("a", 3) < b2, "a was not held by b's failure");
            Assert.True(await run.PositionAsync("c", 3) < b2, "c was not held by b's failure");
            Assert.Equal(2, run.Receives.Count("b", 3)); // received with b2, held, received again
        }

        if (mode != FifoMode.BatchingOff)
        {
            var sameGroupInOneTransaction = await db.ScalarAsync<long>($"SELECT count(*) FROM (SELECT tx, grp FROM {run.Log} GROUP BY tx, grp HAVING count(*) > 1) x");
            Assert.Equal(0, sameGroupInOneTransaction);
        }

        Assert.Equal((0, 0), await sqs.CountsAsync(run.Queue));
    }

    /// <summary>A FIFO queue, its log table (effects in commit order) and the receives the worker saw.</summary>
    private sealed class FifoRun
    {
        private readonly SqsFixture _sqs;
        private readonly PostgresFixture _db;
        private readonly bool _wholeGroupPerReceive;
        private readonly string _name;
        private readonly PostgresIdempotencyStore _store;

        private FifoRun(SqsFixture sqs, PostgresFixture db, string name, bool wholeGroupPerReceive, string queue, string log, PostgresIdempotencyStore store)
        {
            _sqs = sqs;
            _db = db;
            _name = name;
            _wholeGroupPerReceive = wholeGroupPerReceive;
            Queue = queue;
            Log = log;
            _store = store;
            Receives = new RealFifoReceives(sqs.CreateClient(), collapse: wholeGroupPerReceive);
        }

        public string Queue { get; }

        public string Log { get; }

        public RealFifoReceives Receives { get; }

        public static async Task<FifoRun> CreateAsync(SqsFixture sqs, PostgresFixture db, string name, bool wholeGroupPerReceive)
        {
            var queue = await sqs.CreateQueueAsync(name, fifo: true);
            var store = await db.CreateStoreAsync();
            var log = $"{db.Schema}.fo_log_{Guid.NewGuid():N}"[..40];
            await using var connection = await db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
            await connection.ExecuteAsync($"CREATE TABLE {log} (n bigserial PRIMARY KEY, grp text NOT NULL, seq int NOT NULL, key text NOT NULL, tx bigint NOT NULL)");
            return new FifoRun(sqs, db, name, wholeGroupPerReceive, queue, log, store);
        }

        /// <summary>Sends in the given order, one at a time; the body is the sequence number, the key the deduplication id.</summary>
        public async Task SendAsync(IReadOnlyList<(string Group, int Seq)> messages)
        {
            foreach (var (group, seq) in messages)
            {
                var physicalGroup = _wholeGroupPerReceive ? RealFifoReceives.Physical(group, seq) : group;
                await _sqs.SendAsync(Queue, seq.ToString(CultureInfo.InvariantCulture), key: null, groupId: physicalGroup, deduplicationId: $"{group}-{seq}");
            }
        }

        public RunningWorker Start(FifoMode mode, Func<string, int, bool> fails, int maxAttempts, string? deadLetterQueue = null)
        {
            async ValueTask WriteAsync(MessageContext context, CancellationToken ct)
            {
                var native = context.GetNative<Message>();
                var group = native.Attributes["MessageGroupId"];
                var seq = int.Parse(native.Body, CultureInfo.InvariantCulture);
                if (fails(group, seq))
                {
                    throw new InvalidOperationException($"{group}{seq} fails on purpose");
                }

                await context.GetNpgsqlConnection().ExecuteAsync($"INSERT INTO {Log} (grp, seq, key, tx) VALUES (@group, @seq, @key, txid_current())",
                    new { group, seq, key = context.Key }, context.GetNpgsqlTransaction());
            }

            IIdempotentMessageHandler handler = mode == FifoMode.SetBased
                ? IdempotentHandler.CreateBatch(
                    async (batch, ct) =>
                    {
                        // Set-based: every message of the transaction in one go; one failure fails them all.
                        foreach (var context in batch.Messages)
                        {
                            await WriteAsync(context, ct);
                        }
                    },
                    WriteAsync)
                : IdempotentHandler.Create(WriteAsync);

            var options = Fast(Queue);
            options.BatchSize = mode == FifoMode.BatchingOff ? 1 : 10;
            options.DeadLetterQueueUrl = deadLetterQueue;
            return Start(Receives.Client, handler, options, maxAttempts);
        }

        public async Task<int[]> EffectsAsync(string group)
        {
            await using var connection = await _db.DataSource.OpenConnectionAsync(TestContext.Current.CancellationToken);
            return [.. await connection.QueryAsync<int>($"SELECT seq FROM {Log} WHERE grp = @group ORDER BY n", new { group })];
        }

        public Task<long> PositionAsync(string group, int seq) =>
            _db.ScalarAsync<long>($"SELECT n FROM {Log} WHERE grp = @group AND seq = @seq", new { group, seq });

        private RunningWorker Start(IAmazonSQS client, IIdempotentMessageHandler handler, SqsIdempotencyOptions options, int maxAttempts) =>
            SqsTestKit.Start(client, _store, handler, Handler(_name, maxAttempts), options);
    }
}
