// A real idempotent Kafka consumer in its own process, for the SIGKILL tests. It prints one line per final result
// ("result <Outcome> <partition>@<offset>"); the test kills it with SIGKILL, or stops it gracefully with a line on stdin.
// Arguments: bootstrap topic group postgres schema storeTable outboxTable businessTable commitEveryMessages commitIntervalMs
using System.Globalization;
using Confluent.Kafka;
using Dapper;
using Idempotency;
using Idempotency.Kafka;
using Idempotency.Postgres;
using Npgsql;

if (args.Length != 10)
{
    Console.Error.WriteLine("usage: bootstrap topic group postgres schema storeTable outboxTable businessTable commitEveryMessages commitIntervalMs");
    return 2;
}

var (bootstrap, topic, group, postgres, schema, storeTable, outboxTable, businessTable) = (args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[7]);
var commitEvery = int.Parse(args[8], CultureInfo.InvariantCulture);
var commitIntervalMs = int.Parse(args[9], CultureInfo.InvariantCulture);

await using var dataSource = NpgsqlDataSource.Create(postgres);
var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema, Table = storeTable, OutboxTable = outboxTable });
var handler = IdempotentHandler.Create(async (context, ct) =>
    await context.GetNpgsqlConnection().ExecuteAsync(
        $"INSERT INTO {businessTable} (id, amount, applied) VALUES (@id, 5, 1) ON CONFLICT (id) DO UPDATE SET amount = {businessTable}.amount + 5, applied = {businessTable}.applied + 1",
        new { id = context.Key },
        context.GetNpgsqlTransaction()));
var processor = new IdempotentProcessor(store, handler, new IdempotencyOptions { HandlerName = "testhost" });
var options = new KafkaIdempotencyOptions<byte[], byte[]>
{
    CommitEveryMessages = commitEvery,
    CommitInterval = TimeSpan.FromMilliseconds(commitIntervalMs),
    PollTimeout = TimeSpan.FromMilliseconds(50),
};
options.Topics.Add(topic);
var config = new ConsumerConfig
{
    BootstrapServers = bootstrap,
    GroupId = group,
    AutoOffsetReset = AutoOffsetReset.Earliest,
    SessionTimeoutMs = 6000,
    HeartbeatIntervalMs = 500,
};
var output = TextWriter.Synchronized(Console.Out);
using var consumer = IdempotentKafkaConsumer<byte[], byte[]>.Create(config, processor, options);
consumer.ResultObserver = result =>
{
    var record = (ConsumeResult<byte[], byte[]>)result.Message.Native!;
    output.WriteLine($"result {result.Outcome} {record.Partition.Value}@{record.Offset.Value}");
};

using var stop = new CancellationTokenSource();
Console.CancelKeyPress += (_, e) => { e.Cancel = true; stop.Cancel(); };
_ = Task.Run(() => { Console.In.ReadLine(); stop.Cancel(); });
await consumer.RunAsync(stop.Token);
output.WriteLine("stopped");
return 0;
