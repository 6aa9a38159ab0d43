using System.Diagnostics;
using System.Globalization;
using System.Text;
using Idempotency.Postgres;
using Npgsql;

/// <summary>
/// 1, 2 and 4 consumer processes per broker (RabbitMQ, Kafka, SQS) on one queue or topic and one PostgreSQL store:
/// throughput per process count, effects checked in SQL, and where the CPU went (consumers, PostgreSQL, broker).
/// </summary>
internal static class ConsumersScenario
{
    /// <summary>What the driver needs to know to run the consumers scenario.</summary>
    public sealed record Settings(string Postgres, string RabbitMq, string Sqs, string[] Brokers, int Unique, int KafkaUnique, int[] Counts, int Concurrency, string OutDir, string CommandLine);

    private sealed record Row(string Broker, int Processes, int Messages, double Seconds, long EffectRows, long EffectTotal, long EffectMax, bool ExactlyOnce, long Left,
        double ConsumersCpu, double PostgresCpu, double BrokerCpu, double Load, int AssignmentChanges)
    {
        public double Rate => Messages / Seconds;

        public double StoreShare => PostgresCpu / Math.Max(1e-9, ConsumersCpu + PostgresCpu + BrokerCpu);

        public double PostgresCores => PostgresCpu / Seconds;

        public double AllCores => AllCpu / Seconds;

        public double CpuPerMessage => AllCpu / Messages;

        /// <summary>The rate the measured CPU per message allows if every core of the machine were this run's alone.</summary>
        public double CpuBoundRate => Environment.ProcessorCount / CpuPerMessage;

        private double AllCpu => ConsumersCpu + PostgresCpu + BrokerCpu;
    }

    public static async Task<int> RunAsync(Settings settings)
    {
        var postmasterPid = ProcCpu.PostmasterPid(settings.Postgres);
        if (postmasterPid is null)
        {
            Console.Error.WriteLine($"warning: no PostgreSQL process found for {Redact(settings.Postgres)}; PostgreSQL CPU will read 0");
        }

        var loadBefore = ProcCpu.LoadAverage();
        Console.WriteLine($"{Environment.ProcessorCount} cores; brokers {string.Join(", ", settings.Brokers)}; processes {string.Join(", ", settings.Counts)}; store {Redact(settings.Postgres)} (postmaster pid {postmasterPid?.ToString(CultureInfo.InvariantCulture) ?? "unknown"})");
        await using var dataSource = NpgsqlDataSource.Create(settings.Postgres);
        var rows = new List<Row>();
        var setups = new List<string>();
        foreach (var brokerName in settings.Brokers)
        {
            await using var broker = await CreateBrokerAsync(brokerName, settings);
            setups.Add($"- **{broker.Name}** ({broker.Unique} keys + 20 % re-sent copies per run): {broker.Setup}. Broker CPU: {broker.CpuSource}.");
            foreach (var count in settings.Counts)
            {
                var row = await RunOnceAsync(broker, count, settings, dataSource, postmasterPid);
                Console.WriteLine(Format(row, rows.FirstOrDefault(r => r.Broker == row.Broker && r.Processes == 1)));
                rows.Add(row);
            }

            if (broker is KafkaUnderTest kafka)
            {
                var changes = rows.Where(r => r.Broker == broker.Name).Select(r => r.AssignmentChanges).ToList();
                setups.Add($"  The host produced each run's messages in {string.Join(", ", kafka.ProductionTimes)} (processes {string.Join(", ", settings.Counts)}), while the consumers consumed. Partition assignment changes (rebalances) during the runs: {string.Join(", ", changes)}.");
            }
        }

        Directory.CreateDirectory(settings.OutDir);
        await File.WriteAllTextAsync(Path.Combine(settings.OutDir, "scale-consumers.md"), Markdown(rows, setups, settings, loadBefore));
        await File.WriteAllTextAsync(Path.Combine(settings.OutDir, "scale-consumers.dat"), ChartData(rows));
        Console.WriteLine($"wrote {Path.Combine(settings.OutDir, "scale-consumers.md")} and scale-consumers.dat (chart: cd {settings.OutDir} && gnuplot scale-consumers.gp)");
        return rows.All(r => r.ExactlyOnce && r.Left == 0) ? 0 : 1;
    }

    /// <summary>A consumer process of any broker (the "consumer-child" scenario).</summary>
    public static async Task<int> RunConsumerAsync(Func<string, string?> arg)
    {
        var schema = arg("--schema")!;
        await using var dataSource = NpgsqlDataSource.Create(arg("--postgres")!);
        // Open the pool before the clock starts.
        await new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema }).PingAsync();
        return arg("--broker") switch
        {
            "rabbitmq" => await RabbitMqUnderTest.RunConsumerAsync(dataSource, schema, arg("--rabbitmq")!, arg("--queue")!, int.Parse(arg("--concurrency")!, CultureInfo.InvariantCulture)),
            "kafka" => await KafkaUnderTest.RunConsumerAsync(dataSource, schema, arg("--kafka")!, arg("--topic")!, arg("--group")!),
            "sqs" => await SqsUnderTest.RunConsumerAsync(dataSource, schema, arg("--sqs")!, arg("--queue")!),
            var other => throw new ArgumentException($"unknown broker '{other}'"),
        };
    }

    private static async Task<IBrokerUnderTest> CreateBrokerAsync(string name, Settings settings) => name switch
    {
        "rabbitmq" => await RabbitMqUnderTest.CreateAsync(settings.RabbitMq, settings.Unique, settings.Concurrency),
        "kafka" => await KafkaUnderTest.StartAsync(settings.KafkaUnique),
        "sqs" => SqsUnderTest.Create(settings.Sqs, settings.Unique),
        _ => throw new ArgumentException($"unknown broker '{name}' (rabbitmq, kafka, sqs)"),
    };

    private static async Task<Row> RunOnceAsync(IBrokerUnderTest broker, int count, Settings settings, NpgsqlDataSource dataSource, int? postmasterPid)
    {
        var runId = Guid.NewGuid().ToString("N")[..8];
        var schema = "scale_" + runId;
        await ExecAsync(dataSource, $"CREATE SCHEMA {schema}; CREATE TABLE {schema}.effects (id text PRIMARY KEY, applied int NOT NULL)");
        await new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema }).EnsureSchemaAsync();
        var sends = Workload.Sends(broker.Unique);
        await broker.PrepareAsync(runId, sends);
        var consumers = new List<ChildProcess>();
        try
        {
            for (var i = 0; i < count; i++)
            {
                consumers.Add(ChildProcess.Start(["consumer-child", "--broker", broker.Name.ToLowerInvariant(), "--schema", schema, "--postgres", settings.Postgres, .. broker.ConsumerArguments(runId)]));
            }

            await broker.WaitForConsumersAsync(consumers);
            var consumersBefore = consumers.Sum(c => c.CpuSeconds);
            var postgresBefore = ProcCpu.OfTree(postmasterPid);
            var brokerBefore = broker.CpuSeconds();
            var clock = Stopwatch.StartNew();
            await broker.StartAsync(runId, consumers);
            while (true)
            {
                await Task.Delay(100);
                var processed = await ScalarAsync(dataSource, $"SELECT count(*) FROM {schema}.processed_messages");
                if (processed == broker.Unique && await broker.PendingAsync(runId) == 0)
                {
                    break;
                }

                if (clock.Elapsed > TimeSpan.FromMinutes(10))
                {
                    throw new TimeoutException($"{broker.Name}, {count} processes: {processed} of {broker.Unique} keys, {await broker.PendingAsync(runId)} messages pending after 10 minutes");
                }
            }

            var seconds = clock.Elapsed.TotalSeconds;
            var consumersCpu = consumers.Sum(c => c.CpuSeconds) - consumersBefore;
            var postgresCpu = ProcCpu.OfTree(postmasterPid) - postgresBefore;
            var brokerCpu = broker.CpuSeconds() - brokerBefore;
            var load = ProcCpu.Load1();
            // A Kafka consumer process reports every change of its assignment: any during the run was a rebalance.
            var assignmentChanges = 0;
            foreach (var consumer in consumers)
            {
                while (consumer.TryReadLine(out var line))
                {
                    assignmentChanges += line.StartsWith("assigned ", StringComparison.Ordinal) ? 1 : 0;
                }
            }

            foreach (var consumer in consumers)
            {
                await consumer.StopAsync();
            }

            var left = await broker.PendingAsync(runId);
            var (effectRows, total, max) = await EffectsAsync(dataSource, schema);
            return new Row(broker.Name, count, sends.Count, seconds, effectRows, total, max, effectRows == broker.Unique && total == broker.Unique && max == 1, left,
                consumersCpu, postgresCpu, brokerCpu, load, assignmentChanges);
        }
        finally
        {
            foreach (var consumer in consumers)
            {
                consumer.Dispose();
            }

            await broker.CleanupAsync(runId);
            await ExecAsync(dataSource, $"DROP SCHEMA {schema} CASCADE");
        }
    }

    private static string Format(Row row, Row? single) => string.Create(CultureInfo.InvariantCulture,
        $"| {row.Broker} | {row.Processes} | {row.Messages} | {row.Seconds:0.0} | {row.Rate:N0} | {(single is null ? 1 : row.Rate / single.Rate):0.00}x | {row.EffectRows} / {row.EffectTotal} / {row.EffectMax} | {(row.ExactlyOnce ? "yes" : "NO")} | {row.Left} | {row.ConsumersCpu:0.0} | {row.PostgresCpu:0.0} | {row.BrokerCpu:0.0} | {row.StoreShare * 100:0} % | {row.PostgresCores:0.00} | {row.AllCores:0.00} | {row.Load:0.0} | {row.CpuPerMessage * 1e6:0} | {row.CpuBoundRate:N0} |");

    private static string Markdown(List<Row> rows, List<string> setups, Settings settings, string loadBefore)
    {
        var md = new StringBuilder();
        md.AppendLine(CultureInfo.InvariantCulture, $"# 1, 2 and 4 consumer processes on one queue or topic and one store ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
        md.AppendLine();
        md.AppendLine(CultureInfo.InvariantCulture, $"`{settings.CommandLine}`; {Environment.ProcessorCount} cores shared by the consumer processes, PostgreSQL and the broker (loopback), and by other builds on the machine.");
        md.AppendLine(CultureInfo.InvariantCulture, $"Load average (/proc/loadavg) before: {loadBefore}; after: {ProcCpu.LoadAverage()}. Store `{Redact(settings.Postgres)}`; every run has its own schema, queue or topic.");
        md.AppendLine();
        foreach (var setup in setups)
        {
            md.AppendLine(setup);
        }

        md.AppendLine();
        md.AppendLine("Every message's handler upserts one business row (`effects`, `applied` + 1) in the claim's transaction. Time: from the start signal (every process connected; for Kafka, every process holding its share of the partitions, and the clock includes producing) until the store holds every key and the broker has nothing unsettled (no ready message, every offset committed). CPU seconds over that time, from /proc: the consumer processes, PostgreSQL (the postmaster and its children), the broker. Store share = PostgreSQL / (consumers + PostgreSQL + broker); cores busy = CPU seconds / run seconds (the machine has " + Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture) + "); load = 1-minute load average at the end of the run; CPU µs/msg = (consumers + PostgreSQL + broker) CPU / messages, which other builds on the machine change far less than msg/s; CPU-bound rate = cores / CPU per message, the rate if the run had every core to itself (where the curve would flatten on this machine with no other load).");
        md.AppendLine();
        md.AppendLine("| broker | processes | messages | s | msg/s | vs 1 process | effects rows / total / max | effects == unique | unsettled | consumers CPU s | PostgreSQL CPU s | broker CPU s | store share | PostgreSQL cores busy | all three cores busy | load | CPU µs/msg | CPU-bound msg/s |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var row in rows)
        {
            md.AppendLine(Format(row, rows.FirstOrDefault(r => r.Broker == row.Broker && r.Processes == 1)));
        }

        return md.ToString();
    }

    /// <summary>One gnuplot data block per broker (plotted with <c>index</c>): processes, msg/s, ratio to 1 process, store share %, PostgreSQL cores, all cores, load, CPU µs/msg, CPU-bound msg/s.</summary>
    private static string ChartData(List<Row> rows)
    {
        var data = new StringBuilder();
        data.AppendLine("# processes msg/s vs_1_process store_share_% postgres_cores all_cores load cpu_us_per_msg cpu_bound_msg/s; one block per broker (gnuplot index 0, 1, ...)");
        foreach (var broker in rows.Select(r => r.Broker).Distinct())
        {
            data.AppendLine("# " + broker);
            var single = rows.First(r => r.Broker == broker);
            foreach (var row in rows.Where(r => r.Broker == broker))
            {
                data.AppendLine(string.Create(CultureInfo.InvariantCulture, $"{row.Processes} {row.Rate:0} {row.Rate / single.Rate:0.00} {row.StoreShare * 100:0} {row.PostgresCores:0.00} {row.AllCores:0.00} {row.Load:0.0} {row.CpuPerMessage * 1e6:0} {row.CpuBoundRate:0}"));
            }

            data.AppendLine();
            data.AppendLine();
        }

        return data.ToString();
    }

    private static async Task ExecAsync(NpgsqlDataSource dataSource, string sql)
    {
        await using var command = dataSource.CreateCommand(sql);
        await command.ExecuteNonQueryAsync();
    }

    private static async Task<long> ScalarAsync(NpgsqlDataSource dataSource, string sql)
    {
        await using var command = dataSource.CreateCommand(sql);
        return Convert.ToInt64(await command.ExecuteScalarAsync(), CultureInfo.InvariantCulture);
    }

    private static async Task<(long Rows, long Total, long Max)> EffectsAsync(NpgsqlDataSource dataSource, string schema)
    {
        await using var command = dataSource.CreateCommand($"SELECT count(*), coalesce(sum(applied), 0), coalesce(max(applied), 0) FROM {schema}.effects");
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return (reader.GetInt64(0), reader.GetInt64(1), reader.GetInt32(2));
    }

    private static string Redact(string connectionString) => new NpgsqlConnectionStringBuilder(connectionString) { Password = null }.ConnectionString;
}
