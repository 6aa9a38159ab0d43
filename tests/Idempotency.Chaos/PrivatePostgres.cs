using System.Diagnostics;
using System.Globalization;

namespace Idempotency.Chaos;

/// <summary>
/// A PostgreSQL cluster of the suite's own (store <c>postgres-crash</c>): <c>initdb</c> into a temp directory, started
/// with <c>pg_ctl</c> as the postgres user on its own port (as scripts/services.sh starts the shared one), default
/// durability (<c>fsync</c> and <c>synchronous_commit</c> on). The <c>postgres-crash</c> fault SIGKILLs the postmaster
/// and every backend it started (what a machine or OOM-killer crash leaves: no shutdown checkpoint, no goodbye to any
/// client), waits, and starts it again with <c>pg_ctl</c>: crash recovery replays the WAL. Only this cluster's
/// processes are ever killed, by PID.
/// </summary>
internal sealed class PrivatePostgres : IAsyncDisposable
{
    private readonly string _dir;

    private PrivatePostgres(string dir, int port)
    {
        _dir = dir;
        Port = port;
    }

    public int Port { get; }

    public int Crashes { get; private set; }

    /// <summary>Gets the SIGKILLs so far: when each happened (<see cref="Stopwatch.GetTimestamp"/>).</summary>
    public List<long> CrashTimes { get; } = [];

    /// <summary>Gets a connection string for the superuser (trust auth on loopback; no pool, so no connection outlives a crash).</summary>
    public string ConnectionString => $"Host=127.0.0.1;Port={Port};Username=postgres;Database=postgres;Pooling=false;Timeout=10";

    private string Data => Path.Combine(_dir, "data");

    private string Log => Path.Combine(_dir, "pg.log");

    private static string Bin
    {
        get
        {
            if (Environment.GetEnvironmentVariable("CHAOS_PG_BIN") is { Length: > 0 } bin)
            {
                return bin;
            }

            var versions = Directory.Exists("/usr/lib/postgresql")
                ? Directory.GetDirectories("/usr/lib/postgresql").Where(d => File.Exists(Path.Combine(d, "bin", "pg_ctl"))).OrderByDescending(d => int.TryParse(Path.GetFileName(d), out var v) ? v : 0).ToList()
                : [];
            return versions.Count > 0
                ? Path.Combine(versions[0], "bin")
                : throw new InvalidOperationException("PostgreSQL's server binaries were not found under /usr/lib/postgresql (apt-get install -y postgresql, or set $CHAOS_PG_BIN)");
        }
    }

    public static async Task<PrivatePostgres> StartAsync(string runId)
    {
        var dir = PrivateServer.CreateDirectory("pg", runId);
        var server = new PrivatePostgres(dir, PrivateServer.ReservePort());
        PrivateServer.Track(server, server.Pids, dir);
        try
        {
            // The data directory must belong to postgres (mode 700), as must the log and socket directory.
            await PrivateServer.RunAsync($"install -d -o postgres -g postgres -m 700 '{server.Data}' && install -d -o postgres -g postgres -m 755 '{dir}/sock' && touch '{server.Log}' && chown postgres '{server.Log}'", Path.Combine(dir, "setup.log"), null, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            await PrivateServer.RunAsync($"runuser -u postgres -- '{Bin}/initdb' -D '{server.Data}' -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-sync", Path.Combine(dir, "setup.log"), null, TimeSpan.FromMinutes(3)).ConfigureAwait(false);
            await server.LaunchAsync().ConfigureAwait(false);
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        return server;
    }

    /// <summary>SIGKILL of the postmaster and its backends, a pause, and <c>pg_ctl start</c> (crash recovery).</summary>
    public async Task CrashAsync(TimeSpan down, CancellationToken ct)
    {
        var postmaster = PrivateServer.ReadPid(Path.Combine(Data, "postmaster.pid")) ?? throw new InvalidOperationException("the private PostgreSQL has no postmaster.pid");
        // The postmaster frozen first (it can start no backend meanwhile), its children listed, then all SIGKILLed; and
        // every process still running in the data directory (a backend that outlived its postmaster keeps the shared
        // memory attached, and the next start would refuse: "pre-existing shared memory block is still in use").
        PrivateServer.Stop(postmaster);
        var children = PrivateServer.ChildrenOf(postmaster);
        lock (CrashTimes)
        {
            CrashTimes.Add(Stopwatch.GetTimestamp());
        }

        await PrivateServer.SigKillAsync(postmaster, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        foreach (var child in children.Concat(PrivateServer.ProcessesIn(Data)).Distinct())
        {
            await PrivateServer.SigKillAsync(child, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }

        // The killed postmaster's parent is the machine's init, which may leave it a zombie for a while; a zombie's PID
        // still answers kill(pid, 0), and the next postmaster would take its lock file for a live server ("lock file
        // postmaster.pid already exists", and the same for the socket's lock file). Every process of this cluster is dead now:
        // the lock files are stale.
        File.Delete(Path.Combine(Data, "postmaster.pid"));
        File.Delete(string.Create(CultureInfo.InvariantCulture, $"{_dir}/sock/.s.PGSQL.{Port}.lock"));
        File.Delete(string.Create(CultureInfo.InvariantCulture, $"{_dir}/sock/.s.PGSQL.{Port}"));
        Crashes++;
        await Task.Delay(down, ct).ConfigureAwait(false);
        await LaunchAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        PrivateServer.Untrack(this);
        if (PrivateServer.ReadPid(Path.Combine(Data, "postmaster.pid")) is { } postmaster && PrivateServer.IsAlive(postmaster))
        {
            try
            {
                await PrivateServer.RunAsync($"runuser -u postgres -- '{Bin}/pg_ctl' -D '{Data}' -m immediate -w -t 60 stop", Path.Combine(_dir, "setup.log"), null, TimeSpan.FromSeconds(90)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is InvalidOperationException or TimeoutException)
            {
                var children = PrivateServer.ChildrenOf(postmaster);
                await PrivateServer.SigKillAsync(postmaster, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                foreach (var child in children)
                {
                    await PrivateServer.SigKillAsync(child, TimeSpan.FromSeconds(30)).ConfigureAwait(false);
                }
            }
        }

        PrivateServer.DeleteDirectory(_dir);
    }

    private IEnumerable<int> Pids() => PrivateServer.ReadPid(Path.Combine(Data, "postmaster.pid")) is { } postmaster
        ? [postmaster, .. PrivateServer.ChildrenOf(postmaster), .. PrivateServer.ProcessesIn(Data)]
        : PrivateServer.ProcessesIn(Data);

    private async Task LaunchAsync()
    {
        // -w waits until it accepts connections (after crash recovery). Loopback only, its own socket directory.
        var options = string.Create(CultureInfo.InvariantCulture, $"-p {Port} -k {_dir}/sock -c listen_addresses=127.0.0.1 -c max_connections=60 -c shared_buffers=16MB");
        try
        {
            await PrivateServer.RunAsync($"runuser -u postgres -- '{Bin}/pg_ctl' -D '{Data}' -l '{Log}' -w -t 300 -s -o '{options}' start", Path.Combine(_dir, "setup.log"), null, TimeSpan.FromMinutes(6)).ConfigureAwait(false);
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
            // The reason is in the server's own log (the directory goes with the scenario).
            var tail = File.Exists(Log) ? string.Join(Environment.NewLine, File.ReadLines(Log).TakeLast(12)) : "(no pg.log)";
            throw new InvalidOperationException($"{e.Message}{Environment.NewLine}pg.log:{Environment.NewLine}{tail}", e);
        }
    }
}
