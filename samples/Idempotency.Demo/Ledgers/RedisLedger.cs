using System.Text.Json;
using Idempotency.Redis;
using Idempotency.Storage;
using StackExchange.Redis;

namespace Idempotency.Demo.Ledgers;

/// <summary>
/// Redis-held state: the business state is two Redis hashes written inside the store's MULTI/EXEC
/// (<c>context.GetRedisTransaction()</c>), so the effect commits exactly when the key's completion does.
/// </summary>
internal sealed class RedisLedger : IDemoLedger
{
    private readonly ConnectionMultiplexer _connection;
    private readonly string _prefix;
    private readonly RedisKey _applied;
    private readonly RedisKey _amounts;

    private RedisLedger(ConnectionMultiplexer connection, string prefix)
    {
        _connection = connection;
        _prefix = prefix;
        _applied = $"{prefix}:orders:applied";
        _amounts = $"{prefix}:orders:amount";
        Store = new RedisIdempotencyStore(connection, new RedisIdempotencyStoreOptions { KeyPrefix = prefix });
    }

    public string StoreName => "redis";

    public IIdempotencyStore Store { get; }

    public static async Task<RedisLedger> CreateAsync(string configuration, string scenario)
    {
        var connection = await ConnectionMultiplexer.ConnectAsync(configuration);
        return new RedisLedger(connection, $"demo:{scenario}");
    }

    public ValueTask ApplyAsync(MessageContext context, CancellationToken cancellationToken)
    {
        var order = JsonSerializer.Deserialize<Order>(context.Body.Span)!;
        // Queued on the store's MULTI/EXEC: applied only if the key's completion commits.
        var transaction = context.GetRedisTransaction();
        _ = transaction.HashIncrementAsync(_applied, context.Key);
        _ = transaction.HashIncrementAsync(_amounts, context.Key, order.Amount);
        return ValueTask.CompletedTask;
    }

    public async Task<(long Orders, long Applications, long Total)> ReadAsync(CancellationToken cancellationToken)
    {
        var db = _connection.GetDatabase();
        var applied = await db.HashValuesAsync(_applied);
        var amounts = await db.HashValuesAsync(_amounts);
        return (applied.Length, applied.Sum(v => (long)v), amounts.Sum(v => (long)v));
    }

    public async ValueTask DisposeAsync()
    {
        // The demo's keys (claims, records, business hashes) go away with the run.
        try
        {
            foreach (var endpoint in _connection.GetEndPoints())
            {
                var server = _connection.GetServer(endpoint);
                var keys = new List<RedisKey>();
                await foreach (var key in server.KeysAsync(pattern: _prefix + ":*", pageSize: 1000))
                {
                    keys.Add(key);
                }

                foreach (var chunk in keys.Chunk(500))
                {
                    await _connection.GetDatabase().KeyDeleteAsync(chunk);
                }
            }
        }
        catch (RedisException)
        {
            // Cleanup is best effort; the records expire with the store's retention anyway.
        }

        await _connection.DisposeAsync();
    }

    private sealed record Order(int Amount);
}
