using Amazon.SQS;
using Dapper;
using Idempotency.Postgres;
using Idempotency.Storage;
using Idempotency.TestSupport;

namespace Idempotency.Sqs.Tests;

/// <summary>Shared pieces of the integration tests: a crediting handler, fast options, a running worker.</summary>
internal static class SqsTestKit
{
    public static readonly TimeSpan Long = TimeSpan.FromSeconds(60);

    /// <summary>Adds 1 to <c>applied</c> of the key's row in the store's transaction: a second effect shows as applied = 2.</summary>
    public static IIdempotentMessageHandler Credit(string table, Func<MessageContext, CancellationToken, Task>? before = null) =>
        IdempotentHandler.Create(async (context, ct) =>
        {
            if (before is not null)
            {
                await before(context, ct);
            }

            await context.GetNpgsqlConnection().ExecuteAsync(
                $"INSERT INTO {table} (id, amount, applied) VALUES (@id, 1, 1) ON CONFLICT (id) DO UPDATE SET applied = {table}.applied + 1",
                new { id = context.Key },
                context.GetNpgsqlTransaction());
        });

    public static IdempotencyOptions Handler(string name, int maxAttempts = 5) => new()
    {
        HandlerName = name,
        Retry = new RetryOptions { MaxAttempts = maxAttempts, InitialDelay = TimeSpan.FromMilliseconds(100), MaxDelay = TimeSpan.FromMilliseconds(500) },
        StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(200), MaxDelay = TimeSpan.FromSeconds(1) },
    };

    /// <summary>Short waits and a 2 s visibility timeout, so redeliveries come quickly.</summary>
    public static SqsIdempotencyOptions Fast(string queueUrl, int visibilitySeconds = 2) => new()
    {
        QueueUrl = queueUrl,
        WaitTimeSeconds = 1,
        Concurrency = 2,
        VisibilityTimeout = TimeSpan.FromSeconds(visibilitySeconds),
        ShutdownTimeout = TimeSpan.FromSeconds(10),
        ReceiveErrorDelay = TimeSpan.FromMilliseconds(200),
    };

    public static RunningWorker Start(IAmazonSQS client, IIdempotencyStore store, IIdempotentMessageHandler handler, IdempotencyOptions handlerOptions, SqsIdempotencyOptions options) =>
        new(new IdempotentSqsWorker(client, new IdempotentProcessor(store, handler, handlerOptions), options));

    public static Task<long> RowsAsync(this PostgresFixture db, string table) => db.ScalarAsync<long>($"SELECT count(*) FROM {table}");

    public static Task<long> AppliedAsync(this PostgresFixture db, string table) => db.ScalarAsync<long>($"SELECT coalesce(sum(applied), 0) FROM {table}");

    public static async Task<bool> DrainedAsync(this SqsFixture sqs, string queueUrl)
    {
        var (visible, notVisible) = await sqs.CountsAsync(queueUrl);
        return visible == 0 && notVisible == 0;
    }

    public static async Task<string> DescribeAsync(this SqsFixture sqs, string queueUrl, PostgresFixture db, string table, params RunningWorker[] workers)
    {
        var (visible, notVisible) = await sqs.CountsAsync(queueUrl);
        return $"queue visible={visible} notVisible={notVisible}; rows={await db.RowsAsync(table)} applied={await db.AppliedAsync(table)}; " +
               string.Join(" | ", workers.Select(w => w.Worker.Statistics.ToString()));
    }

    public static async Task<string> DescribeAsync(this SqsFixture sqs, string queueUrl, EffectStore store, params RunningWorker[] workers)
    {
        var (visible, notVisible) = await sqs.CountsAsync(queueUrl);
        return $"queue visible={visible} notVisible={notVisible}; {store} effects {await store.ReadAsync()}; " +
               string.Join(" | ", workers.Select(w => w.Worker.Statistics.ToString()));
    }

    /// <summary>Waits until the queue is empty and the store shows effects for <paramref name="keys"/> keys.</summary>
    public static Task WaitProcessedAsync(this SqsFixture sqs, string queueUrl, EffectStore store, long keys, TimeSpan timeout, params RunningWorker[] workers) =>
        SqsFixture.WaitUntilAsync(
            async () => (await store.ReadAsync()).Keys == keys && await sqs.DrainedAsync(queueUrl),
            timeout,
            $"{keys} keys with effects in {store} and an empty queue",
            () => sqs.DescribeAsync(queueUrl, store, workers));

    /// <summary>Waits until the queue is empty and the business table has <paramref name="rows"/> rows.</summary>
    public static Task WaitProcessedAsync(this SqsFixture sqs, string queueUrl, PostgresFixture db, string table, long rows, TimeSpan timeout, params RunningWorker[] workers) =>
        SqsFixture.WaitUntilAsync(
            async () => await db.RowsAsync(table) == rows && await sqs.DrainedAsync(queueUrl),
            timeout,
            $"{rows} business rows and an empty queue",
            () => sqs.DescribeAsync(queueUrl, db, table, workers));
}

/// <summary>A worker running in the background until disposed (or stopped).</summary>
internal sealed class RunningWorker : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();

    public RunningWorker(IdempotentSqsWorker worker)
    {
        Worker = worker;
        Run = Task.Run(() => worker.RunAsync(_stop.Token));
    }

    public IdempotentSqsWorker Worker { get; }

    public Task Run { get; }

    public SqsWorkerStatistics Statistics => Worker.Statistics;

    /// <summary>Stops gracefully and waits (bounded) for the worker to return.</summary>
    public async Task StopAsync(TimeSpan? timeout = null)
    {
        await _stop.CancelAsync();
        await Run.WaitAsync(timeout ?? TimeSpan.FromSeconds(30));
    }

    public async ValueTask DisposeAsync()
    {
        if (!Run.IsCompleted)
        {
            await StopAsync();
        }

        _stop.Dispose();
    }
}
