using Idempotency.Postgres;
using Idempotency.TestSupport;
using static Idempotency.Sqs.Tests.SqsTestKit;

namespace Idempotency.Sqs.Tests;

/// <summary>A misconfigured store and outages spend no attempts on SQS: only the handler's failures count toward MaxAttempts.</summary>
public sealed class SqsMisconfigurationTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Missing_schema_dead_letters_nothing_and_resumes_once_created_with_exact_counts()
    {
        var queue = await sqs.CreateQueueAsync("misconf");
        var deadLetters = await sqs.CreateQueueAsync("misconf-dlq");
        var table = await db.CreateBusinessTableAsync();
        await sqs.SendManyAsync(queue, Enumerable.Range(0, 20).Select(i => ($"{{\"id\":{i}}}", (string?)$"m-{i}")).ToList());
        var store = new PostgresIdempotencyStore(db.DataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = "never_created_" + Guid.NewGuid().ToString("N")[..8] });
        var options = Fast(queue);
        options.DeadLetterQueueUrl = deadLetters;

        // MaxAttempts 2: a receive count of 2 would dead-letter a healthy message if outages were attempts.
        await using var worker = Start(sqs.Client, store, Credit(table), Handler("misconf", maxAttempts: 2), options);
        await Task.Delay(TimeSpan.FromSeconds(8), TestContext.Current.CancellationToken);
        Assert.Equal(0L, await db.RowsAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetters));

        await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        await sqs.WaitProcessedAsync(queue, db, table, 20, Long, worker);
        await worker.StopAsync();

        Assert.Equal(20L, await db.AppliedAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetters));
        Assert.True(await sqs.DrainedAsync(queue));
    }
}

/// <summary>SQS counts receives; the worker counts only the handler's failures as attempts.</summary>
public sealed class SqsAttemptTests(SqsFixture sqs, PostgresFixture db) : IClassFixture<SqsFixture>, IClassFixture<PostgresFixture>
{
    [Fact]
    public async Task Receives_that_met_a_store_outage_are_not_attempts()
    {
        var queue = await sqs.CreateQueueAsync("attempts");
        var deadLetters = await sqs.CreateQueueAsync("attempts-dlq");
        var table = await db.CreateBusinessTableAsync();
        await using var proxied = db.ConnectThroughProxy();
        proxied.Proxy.Start();
        var store = new PostgresIdempotencyStore(proxied.DataSource, new PostgresIdempotencyStoreOptions { Schema = db.Schema, Table = "attempts_" + Guid.NewGuid().ToString("N")[..8] });
        await store.EnsureSchemaAsync(TestContext.Current.CancellationToken);
        await sqs.SendAsync(queue, "{}", "k");
        var runs = 0;

        // Runs 1 and 2: the store's connection is cut under the handler (an outage: not an attempt). Run 3: the handler
        // fails on its own (attempt 1 of 3). Run 4: it succeeds. Counting receives would dead-letter it at run 3.
        var handler = Credit(table, before: async (context, ct) =>
        {
            switch (Interlocked.Increment(ref runs))
            {
                case 1 or 2:
                    proxied.Proxy.Stop();
                    _ = Task.Delay(500, CancellationToken.None).ContinueWith(_ => proxied.Proxy.Start(), TaskScheduler.Default);
                    await Dapper.SqlMapper.ExecuteAsync(context.GetNpgsqlConnection(), "SELECT 1", transaction: context.GetNpgsqlTransaction());
                    break;
                case 3:
                    throw new InvalidOperationException("transient handler failure");
            }
        });
        var options = Fast(queue);
        options.DeadLetterQueueUrl = deadLetters;
        await using var worker = Start(sqs.Client, store, handler, Handler("attempts", maxAttempts: 3), options);

        await sqs.WaitProcessedAsync(queue, db, table, 1, Long, worker);
        await worker.StopAsync();

        Assert.Equal(4, runs);
        Assert.Equal(1L, await db.AppliedAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetters));
    }
}
