using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;

namespace Idempotency.Postgres.Tests;

/// <summary>
/// A private PostgreSQL primary with a synchronous standby (<c>scripts/services.sh pg-ha-up</c>); consumers use the
/// multi-host read-write connection string. The primary is SIGKILLed mid-run and the standby promoted.
/// </summary>
public sealed class StandbyTakeoverTests(PostgresStandbyFixture pair) : IClassFixture<PostgresStandbyFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>
    /// 4 workers process 3,000 keys (+20% re-sent copies) in batches of 20, each message adding 1 to its own business
    /// row in the claim's transaction. Once a third is acknowledged the primary is SIGKILLed, and the standby promoted
    /// 1 s later. Messages not acknowledged meanwhile (store unavailable) are redelivered; the same processor and data
    /// source resume on the promoted standby by themselves. Every key ends with exactly one effect and one processed
    /// row: nothing acknowledged was lost (synchronous replication), nothing applied twice. With asynchronous
    /// replication the same run may lose acknowledged keys (effect and processed row together, never one without the
    /// other): reported, not asserted, and still never applied twice.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Primary_killed_mid_run_and_standby_promoted_loses_nothing_applies_nothing_twice_and_resumes(bool synchronous)
    {
        await pair.EnsurePairAsync();
        if (!synchronous)
        {
            await pair.MakeAsynchronousAsync();
        }

        await using var dataSource = pair.CreateDataSource();
        var suffix = Guid.NewGuid().ToString("N")[..8];
        var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Table = "ha_processed_" + suffix, OutboxTable = "ha_outbox_" + suffix });
        await store.EnsureSchemaAsync(Ct);
        var table = "ha_effects_" + suffix;
        await using (var connection = await dataSource.OpenConnectionAsync(Ct))
        {
            await connection.ExecuteAsync($"CREATE TABLE {table} (id text PRIMARY KEY, applied int NOT NULL)");
        }

        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, applied) VALUES (@id, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
                new { id = context.Key }, context.GetNpgsqlTransaction())), new IdempotencyOptions { HandlerName = "ha" });

        var unique = Enumerable.Range(0, 3_000).Select(i => $"p{i}").ToList();
        var messages = unique.Concat(unique.Where((_, i) => i % 5 == 0))
            .Select(k => new IncomingMessage(k, Encoding.UTF8.GetBytes("{\"amount\":1}"))).OrderBy(_ => Random.Shared.Next()).ToList();
        var queue = new ConcurrentQueue<IncomingMessage>(messages);
        var acked = new ConcurrentDictionary<string, byte>();
        var outcomes = new ConcurrentDictionary<ProcessingOutcome, int>();
        var ackedCount = 0;
        var killAt = messages.Count / 3;
        var clock = Stopwatch.StartNew();
        TimeSpan killedAt = default, promotedAt = default, firstAckAfterPromotion = default;
        Task? failover = null;

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
                var started = clock.Elapsed;
                var redeliver = false;
                foreach (var result in await processor.ProcessBatchAsync(batch, Ct))
                {
                    outcomes.AddOrUpdate(result.Outcome, 1, (_, n) => n + 1);
                    if (result.IsCommitted)
                    {
                        acked[result.Message.Key!] = 0;
                        if (Interlocked.Increment(ref ackedCount) == killAt)
                        {
                            await pair.KillPrimaryAsync();
                            killedAt = clock.Elapsed;
                            failover = Task.Run(async () =>
                            {
                                await Task.Delay(1_000, Ct); // what a failover manager takes at the least to decide
                                await pair.PromoteStandbyAsync();
                                promotedAt = clock.Elapsed;
                            });
                        }
                        else if (promotedAt != default && started > promotedAt && firstAckAfterPromotion == default)
                        {
                            firstAckAfterPromotion = clock.Elapsed;
                        }
                    }
                    else
                    {
                        // Not acknowledged: the broker redelivers it. A dead primary must read as an outage, never as a failure.
                        Assert.True(result.Outcome is ProcessingOutcome.StoreUnavailable or ProcessingOutcome.InProgress, $"{result.Message.Key}: {result.Outcome} {result.Exception}");
                        queue.Enqueue(result.Message);
                        redeliver = true;
                    }
                }

                if (redeliver)
                {
                    await Task.Delay(100, Ct);
                }
            }
        })));
        await failover!;
        var elapsed = clock.Elapsed;

        await using var check = await dataSource.OpenConnectionAsync(Ct);
        var (rows, total, max) = await check.QuerySingleAsync<(long, long, long)>($"SELECT count(*), coalesce(sum(applied), 0), coalesce(max(applied), 0) FROM {table}");
        var processed = await check.ExecuteScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}");
        var onStandby = await check.ExecuteScalarAsync<int>("SELECT inet_server_port()");
        TestContext.Current.TestOutputHelper!.WriteLine(
            $"{(synchronous ? "synchronous" : "asynchronous")} standby: {messages.Count} messages ({unique.Count} unique) in {elapsed.TotalSeconds:0.0} s; primary SIGKILLed at {killedAt.TotalSeconds:0.0} s, " +
            $"standby promoted at {promotedAt.TotalSeconds:0.0} s, first batch acknowledged after it at {firstAckAfterPromotion.TotalSeconds:0.0} s; " +
            $"outcomes {string.Join(", ", outcomes.OrderBy(o => o.Key).Select(o => $"{o.Key} {o.Value}"))}; effects: {rows} rows, total {total}, max {max}; processed rows {processed}; acknowledged but lost {unique.Count - rows}; now served by :{onStandby}");

        Assert.Equal(5434, onStandby);
        Assert.Equal(unique.Count, acked.Count);
        Assert.Equal(rows, processed); // effect and processed row commit (and are lost) together
        Assert.Equal(1L, max);
        if (synchronous)
        {
            Assert.Equal((unique.Count, (long)unique.Count), (rows, total));
        }
    }
}
