using System.Text;
using Dapper;
using Idempotency.Postgres;
using Idempotency.Storage;
using Idempotency.TestSupport;
using Npgsql;

namespace Idempotency.Postgres.Tests;

/// <summary>
/// The start-up check (<see cref="PostgresIdempotencyStore.CheckAsync"/>) finds what every claim would find: a role that
/// may read the keys but not write them is a misconfiguration at start, not at the first message.
/// </summary>
public sealed class StartupCheckTests(PostgresFixture db) : IClassFixture<PostgresFixture>
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task A_role_that_can_read_but_not_write_the_keys_fails_the_check_as_it_would_fail_every_claim()
    {
        var owned = await db.CreateStoreAsync();
        var role = "readonly_" + Guid.NewGuid().ToString("N")[..8];
        await using (var admin = await db.DataSource.OpenConnectionAsync(Ct))
        {
            await admin.ExecuteAsync($"CREATE ROLE {role} LOGIN PASSWORD 'pw'; GRANT USAGE ON SCHEMA {db.Schema} TO {role}; GRANT SELECT ON {owned.QualifiedTableName} TO {role}");
        }

        try
        {
            var connection = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Username = role, Password = "pw", Pooling = false };
            await using var dataSource = NpgsqlDataSource.Create(connection.ConnectionString);
            var store = new PostgresIdempotencyStore(dataSource, owned.Options);
            var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "readonly" });

            var failure = await store.CheckAsync(Ct);
            var claimed = await processor.ProcessAsync(new IncomingMessage("k-1", Encoding.UTF8.GetBytes("{}")) { Destination = "orders" }, Ct);

            // The check and the claim agree: both a misconfiguration, for the same reason.
            Assert.Equal(ProcessingOutcome.StoreMisconfigured, claimed.Outcome);
            Assert.Equal(StoreFailureKind.Misconfiguration, failure?.Kind);
            Assert.Contains("permission denied", failure?.Description, StringComparison.Ordinal);

            // With the claim's and the completion's privileges the check passes, and so does a claim.
            await using (var admin = await db.DataSource.OpenConnectionAsync(Ct))
            {
                await admin.ExecuteAsync($"GRANT INSERT ON {owned.QualifiedTableName} TO {role}");
            }

            var insertOnly = await store.CheckAsync(Ct);
            Assert.Equal(StoreFailureKind.Misconfiguration, insertOnly?.Kind);
            Assert.Contains("permission denied", insertOnly?.Description, StringComparison.Ordinal);

            await using (var admin = await db.DataSource.OpenConnectionAsync(Ct))
            {
                await admin.ExecuteAsync($"GRANT UPDATE ON {owned.QualifiedTableName} TO {role}");
            }

            Assert.Null(await store.CheckAsync(Ct));
            Assert.Equal(ProcessingOutcome.Processed, (await processor.ProcessAsync(new IncomingMessage("k-2", Encoding.UTF8.GetBytes("{}")) { Destination = "orders" }, Ct)).Outcome);
        }
        finally
        {
            await using var admin = await db.DataSource.OpenConnectionAsync(Ct);
            await admin.ExecuteAsync($"REVOKE ALL ON ALL TABLES IN SCHEMA {db.Schema} FROM {role}; REVOKE USAGE ON SCHEMA {db.Schema} FROM {role}; DROP ROLE {role}");
        }
    }

    [Fact]
    public async Task A_server_that_takes_no_writes_is_not_ready_although_it_answers_every_read()
    {
        var owned = await db.CreateStoreAsync();
        var connection = new NpgsqlConnectionStringBuilder(db.ConnectionString) { Options = "-c default_transaction_read_only=on", Pooling = false };
        await using var dataSource = NpgsqlDataSource.Create(connection.ConnectionString);
        var store = new PostgresIdempotencyStore(dataSource, owned.Options);
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), new IdempotencyOptions { HandlerName = "readonly-server" });

        var claimed = await processor.ProcessAsync(new IncomingMessage("k-1", Encoding.UTF8.GetBytes("{}")) { Destination = "orders" }, Ct);
        var failure = await store.CheckAsync(Ct);

        // The claim fails as an outage, and the check agrees instead of reporting the store ready (which would reopen a
        // consumer's gate only for the next claim to close it again, one redelivery per round).
        Assert.Equal(ProcessingOutcome.StoreUnavailable, claimed.Outcome);
        Assert.Equal(StoreFailureKind.Outage, failure?.Kind);
        Assert.Contains("accepts no writes", failure?.Description, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_check_writes_nothing()
    {
        var store = await db.CreateStoreAsync();

        Assert.Null(await store.CheckAsync(Ct));

        await using var admin = await db.DataSource.OpenConnectionAsync(Ct);
        Assert.Equal(0L, await admin.ExecuteScalarAsync<long>($"SELECT count(*) FROM {store.QualifiedTableName}"));
    }
}
