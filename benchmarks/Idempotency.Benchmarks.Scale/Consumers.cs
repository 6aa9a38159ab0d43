using System.Diagnostics;
using System.Globalization;
using System.Text;
using Idempotency;
using Idempotency.Postgres;
using Idempotency.RabbitMQ;
using Npgsql;
using RabbitMQ.Client;

/// <summary>
/// 1, 2 and 4 consumer processes on one RabbitMQ queue and one PostgreSQL store: throughput per process count, effects
/// checked in SQL, and where the CPU went (consumers, PostgreSQL, RabbitMQ).
/// </summary>
internal static class ConsumersScenario
{
    public static async Task<int> RunAsync(string postgres, string rabbit, int unique, int[] counts, int concurrency, string outDir)
    {
        var messages = unique + unique / 5;
        var postmasterPid = PostmasterPid(postgres);
        var rows = new List<string>();
        var loadBefore = Load();
        Console.WriteLine($"{Environment.ProcessorCount} cores; {messages} messages ({unique} unique) per run; Concurrency {concurrency} per process; store {postgres}; postmaster pid {postmasterPid?.ToString(CultureInfo.InvariantCulture) ?? "unknown"}");
        await using var dataSource = NpgsqlDataSource.Create(postgres);
        var factory = new ConnectionFactory { Uri = new Uri(rabbit), ClientProvidedName = "scale-bench" };
        await using var connection = await factory.CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        foreach (var count in counts)
        {
            var id = Guid.NewGuid().ToString("N")[..8];
            var schema = "scale_" + id;
            var queue = "scale-" + id;
            await ExecAsync(dataSource, $"CREATE SCHEMA {schema}; CREATE TABLE {schema}.effects (id text PRIMARY KEY, applied int NOT NULL)");
            var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema });
            await store.EnsureSchemaAsync();
            await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
            var keys = Enumerable.Range(0, unique).Select(i => $"m{i}").ToList();
            var sends = keys.Concat(keys.Where((_, i) => i % 5 == 0)).OrderBy(_ => Random.Shared.Next()).ToList();
            foreach (var chunk in sends.Chunk(500))
            {
                await Task.WhenAll(chunk.Select(k => channel.BasicPublishAsync("", queue, true, new BasicProperties { MessageId = k, DeliveryMode = DeliveryModes.Persistent }, Encoding.UTF8.GetBytes("{\"amount\":5}")).AsTask()));
            }

            var children = new List<Process>();
            for (var i = 0; i < count; i++)
            {
                children.Add(StartChild(["consumer-child", "--queue", queue, "--schema", schema, "--postgres", postgres, "--rabbitmq", rabbit, "--concurrency", concurrency.ToString(CultureInfo.InvariantCulture)]));
            }

            foreach (var child in children)
            {
                var line = await child.StandardOutput.ReadLineAsync();
                if (line != "ready")
                {
                    throw new InvalidOperationException($"child said '{line}': {await child.StandardError.ReadToEndAsync()}");
                }
            }

            var pgBefore = ProcessTreeCpu(postmasterPid);
            var rabbitBefore = BeamCpu();
            var clock = Stopwatch.StartNew();
            foreach (var child in children)
            {
                await child.StandardInput.WriteLineAsync("go");
                await child.StandardInput.FlushAsync();
            }

            long processed;
            while (true)
            {
                await Task.Delay(100);
                processed = await ScalarAsync(dataSource, $"SELECT count(*) FROM {schema}.processed_messages");
                var ready = (await channel.QueueDeclarePassiveAsync(queue)).MessageCount;
                if (processed == unique && ready == 0)
                {
                    break;
                }

                if (clock.Elapsed > TimeSpan.FromMinutes(8))
                {
                    throw new TimeoutException($"{count} consumers: {processed} of {unique} keys after 8 minutes");
                }
            }

            var elapsed = clock.Elapsed.TotalSeconds;
            var pgCpu = ProcessTreeCpu(postmasterPid) - pgBefore;
            var rabbitCpu = BeamCpu() - rabbitBefore;
            double consumersCpu = 0;
            foreach (var child in children)
            {
                await child.StandardInput.WriteLineAsync("stop");
                await child.StandardInput.FlushAsync();
            }

            foreach (var child in children)
            {
                var line = await child.StandardOutput.ReadLineAsync();
                consumersCpu += double.Parse(line ?? "0", CultureInfo.InvariantCulture);
                await child.WaitForExitAsync();
                child.Dispose();
            }

            var left = (await channel.QueueDeclarePassiveAsync(queue)).MessageCount;
            var (effectRows, total, max) = await EffectsAsync(dataSource, schema);
            var total3 = pgCpu + rabbitCpu + consumersCpu;
            var row = $"| {count} | {messages} | {elapsed:0.0} | {messages / elapsed:N0} | {effectRows} / {total} / {max} | {(effectRows == unique && total == unique && max == 1 ? "yes" : "NO")} | {left} | {consumersCpu:0.0} | {pgCpu:0.0} | {rabbitCpu:0.0} | {(total3 > 0 ? pgCpu / total3 : 0):P0} |";
            Console.WriteLine(row);
            rows.Add(row);
            await channel.QueueDeleteAsync(queue);
            await ExecAsync(dataSource, $"DROP SCHEMA {schema} CASCADE");
        }

        var md = new StringBuilder();
        md.AppendLine($"# 1, 2 and 4 consumer processes on one queue and one store ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
        md.AppendLine();
        md.AppendLine($"`dotnet run -c Release --project benchmarks/Idempotency.Benchmarks.Scale -- consumers --unique {unique} --concurrency {concurrency}`; {Environment.ProcessorCount} cores shared by the consumers, PostgreSQL and RabbitMQ (loopback).");
        md.AppendLine($"Load average (/proc/loadavg) before: {loadBefore}; after: {Load()} (other builds share the machine).");
        md.AppendLine($"One classic durable queue, persistent messages ({unique} keys + 20% re-sent copies, shuffled); each process an IdempotentRabbitMqConsumer (Concurrency {concurrency}, PrefetchCount 100, per message), the handler upserting one business row in the claim's transaction; store `{Redact(postgres)}`.");
        md.AppendLine("Time: from the go signal (every process connected) until the store holds every key and the queue has no ready message. CPU seconds over that time: the consumer processes (their own TotalProcessorTime from go to stop), PostgreSQL (the postmaster and its children, /proc), RabbitMQ (beam.smp, shared with other users of the broker); store share = PostgreSQL / (all three).");
        md.AppendLine();
        md.AppendLine("| processes | messages | s | msg/s | effects rows / total / max | effects == unique | left in queue | consumers CPU s | PostgreSQL CPU s | RabbitMQ CPU s | store share |");
        md.AppendLine("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|");
        foreach (var row in rows)
        {
            md.AppendLine(row);
        }

        Directory.CreateDirectory(outDir);
        var path = Path.Combine(outDir, "scale-consumers.md");
        await File.WriteAllTextAsync(path, md.ToString());
        Console.WriteLine($"wrote {path}");
        return rows.All(r => r.Contains("| yes |", StringComparison.Ordinal)) ? 0 : 1;
    }

    public static async Task<int> RunChildAsync(string queue, string schema, string postgres, string rabbit, int concurrency)
    {
        await using var dataSource = NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(postgres) { MaxPoolSize = concurrency + 4 }.ConnectionString);
        var store = new PostgresIdempotencyStore(dataSource, new PostgresIdempotencyStoreOptions { Schema = schema });
        var processor = new IdempotentProcessor(store, IdempotentHandler.Create(async (context, ct) =>
        {
            await using var command = new NpgsqlCommand($"INSERT INTO {schema}.effects (id, applied) VALUES (@id, 1) ON CONFLICT (id) DO UPDATE SET applied = {schema}.effects.applied + 1", context.GetNpgsqlConnection(), context.GetNpgsqlTransaction());
            command.Parameters.AddWithValue("id", context.Key);
            await command.ExecuteNonQueryAsync(ct);
        }), new IdempotencyOptions { HandlerName = "scale" });
        var factory = new ConnectionFactory { Uri = new Uri(rabbit), AutomaticRecoveryEnabled = true, ClientProvidedName = "scale-bench-consumer" };
        await using var connection = await factory.CreateConnectionAsync();
        await using var consumer = await IdempotentRabbitMqConsumer.CreateAsync(connection, processor, new RabbitMqIdempotencyOptions { Queue = queue, Concurrency = concurrency, PrefetchCount = 100 });
        await store.PingAsync(); // open the pool before the clock starts
        Console.WriteLine("ready");
        if (Console.ReadLine() != "go")
        {
            return 1;
        }

        using var self = Process.GetCurrentProcess();
        var cpuAtGo = self.TotalProcessorTime;
        await consumer.StartAsync();
        _ = Console.ReadLine(); // "stop"
        self.Refresh();
        var cpu = self.TotalProcessorTime - cpuAtGo; // the run only, not start-up and JIT before it
        await consumer.StopAsync();
        Console.WriteLine(cpu.TotalSeconds.ToString(CultureInfo.InvariantCulture));
        return 0;
    }

    private static Process StartChild(string[] args)
    {
        var path = Environment.ProcessPath!;
        var info = Path.GetFileNameWithoutExtension(path) == "dotnet"
            ? new ProcessStartInfo(path, [Path.Combine(AppContext.BaseDirectory, "Idempotency.Benchmarks.Scale.dll"), .. args])
            : new ProcessStartInfo(path, args);
        info.RedirectStandardInput = info.RedirectStandardOutput = info.RedirectStandardError = true;
        info.UseShellExecute = false;
        return Process.Start(info) ?? throw new InvalidOperationException("could not start a consumer process");
    }

    /// <summary>The pid of the PostgreSQL server on the connection string's port, from its data directory's postmaster.pid (via the server's own data_directory is not readable by app: the port's listener is looked up in /proc).</summary>
    private static int? PostmasterPid(string postgres)
    {
        var port = new NpgsqlConnectionStringBuilder(postgres).Port;
        foreach (var dir in Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)))
        {
            try
            {
                var cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                var pid = int.Parse(Path.GetFileName(dir), CultureInfo.InvariantCulture);
                if (cmdline.Contains("postgres", StringComparison.Ordinal) && ParentOf(pid) is var parent && !IsPostgres(parent)
                    && File.Exists(Path.Combine(DataDirectory(cmdline) ?? "/nonexistent", "postmaster.pid"))
                    && File.ReadAllLines(Path.Combine(DataDirectory(cmdline)!, "postmaster.pid")) is { Length: > 3 } lines && lines[3].Trim() == port.ToString(CultureInfo.InvariantCulture))
                {
                    return pid;
                }
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }
        }

        return null;
    }

    private static string? DataDirectory(string cmdline)
    {
        var parts = cmdline.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        var i = Array.IndexOf(parts, "-D");
        return i >= 0 && i + 1 < parts.Length ? parts[i + 1] : null;
    }

    private static bool IsPostgres(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").Trim().StartsWith("postgres", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static int ParentOf(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return int.Parse(fields[1], CultureInfo.InvariantCulture);
    }

    /// <summary>CPU seconds (user + system) of a process and its children that are alive now.</summary>
    private static double ProcessTreeCpu(int? root)
    {
        if (root is null)
        {
            return 0;
        }

        double ticks = 0;
        foreach (var dir in Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)))
        {
            try
            {
                var pid = int.Parse(Path.GetFileName(dir), CultureInfo.InvariantCulture);
                if (pid == root || ParentOf(pid) == root)
                {
                    ticks += CpuTicks(pid);
                }
            }
            catch (IOException)
            {
            }
        }

        return ticks / 100.0; // USER_HZ
    }

    private static double BeamCpu()
    {
        double ticks = 0;
        foreach (var dir in Directory.EnumerateDirectories("/proc").Where(d => int.TryParse(Path.GetFileName(d), out _)))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(dir, "comm")).Trim() == "beam.smp")
                {
                    ticks += CpuTicks(int.Parse(Path.GetFileName(dir), CultureInfo.InvariantCulture));
                }
            }
            catch (IOException)
            {
            }
        }

        return ticks / 100.0;
    }

    private static double CpuTicks(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        return double.Parse(fields[11], CultureInfo.InvariantCulture) + double.Parse(fields[12], CultureInfo.InvariantCulture); // utime, stime
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

    private static string Load() => File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "?";

    private static string Redact(string connectionString)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString) { Password = null };
        return builder.ConnectionString;
    }
}
