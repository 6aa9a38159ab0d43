using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.TestSupport;

namespace Idempotency.Postgres.Tests;

/// <summary>Keys the PostgreSQL store cannot hold are rejected before anything runs; options asking for more fail at start.</summary>
public sealed class KeyLimitTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static IncomingMessage Message(string key, string body = "{}") => new(key, Encoding.UTF8.GetBytes(body)) { Destination = "orders" };

    [Fact]
    public async Task MaxKeyBytes_above_what_the_store_holds_fails_at_construction_naming_both()
    {
        var store = await db.CreateStoreAsync();

        var error = Assert.Throws<ArgumentException>(() => new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "limits", MaxKeyBytes = 4096 }));

        Assert.Contains("MaxKeyBytes", error.Message, StringComparison.Ordinal);
        Assert.Contains(PostgresIdempotencyStore.KeyByteLimit.ToString(System.Globalization.CultureInfo.InvariantCulture), error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_longest_key_the_store_allows_is_stored_and_one_byte_more_is_an_invalid_key()
    {
        var store = await db.CreateStoreAsync();
        var runs = 0;
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) =>
        {
            Interlocked.Increment(ref runs);
            return ValueTask.CompletedTask;
        }), new IdempotencyOptions { HandlerName = new string('h', 200), MaxKeyBytes = PostgresIdempotencyStore.KeyByteLimit });

        // Multi-byte characters, so the limit is in bytes, not characters: 1,024 two-byte characters.
        var longest = new string('é', PostgresIdempotencyStore.KeyByteLimit / 2);
        var processed = await processor.ProcessAsync(Message(longest), TestContext.Current.CancellationToken);
        var duplicate = await processor.ProcessAsync(Message(longest), TestContext.Current.CancellationToken);
        var tooLong = await processor.ProcessAsync(Message(longest + "x"), TestContext.Current.CancellationToken);
        var loneSurrogate = await processor.ProcessAsync(Message("k-\uDC00"), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, processed.Outcome);
        Assert.Equal(ProcessingOutcome.Duplicate, duplicate.Outcome);
        Assert.Equal(ProcessingOutcome.InvalidKey, tooLong.Outcome);
        Assert.Equal(ProcessingOutcome.InvalidKey, loneSurrogate.Outcome);
        Assert.Equal(Delivery.DeliveryAction.DeadLetter, processor.Decide(tooLong, 1).Action);
        Assert.Equal(1, runs);
        Assert.Equal(1L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }

    [Theory]
    [InlineData(PayloadMismatchPolicy.Quarantine)]
    [InlineData(PayloadMismatchPolicy.Fail)]
    public async Task An_exact_copy_behind_a_mismatching_copy_in_one_batch_is_a_duplicate_as_it_would_be_alone(PayloadMismatchPolicy policy)
    {
        var store = await db.CreateStoreAsync();
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "copies", PayloadMismatchPolicy = policy });
        await processor.ProcessAsync(Message("k", "original"), TestContext.Current.CancellationToken);

        var alone = await processor.ProcessAsync(Message("k", "original"), TestContext.Current.CancellationToken);
        var batch = await processor.ProcessBatchAsync([Message("k", "changed"), Message("k", "original"), Message("n", "new")], TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Duplicate, alone.Outcome);
        Assert.Equal([ProcessingOutcome.PayloadMismatch, ProcessingOutcome.Duplicate, ProcessingOutcome.Processed], batch.Select(r => r.Outcome));
        Assert.Equal(2L, await db.ScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }
}
