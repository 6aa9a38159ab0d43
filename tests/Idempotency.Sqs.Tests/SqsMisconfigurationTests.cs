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

        await store.EnsureSchemaAsync();
        await sqs.WaitProcessedAsync(queue, db, table, 20, Long, worker);
        await worker.StopAsync();

        Assert.Equal(20L, await db.AppliedAsync(table));
        Assert.Equal((0, 0), await sqs.CountsAsync(deadLetters));
        Assert.True(await sqs.DrainedAsync(queue));
    }
}
