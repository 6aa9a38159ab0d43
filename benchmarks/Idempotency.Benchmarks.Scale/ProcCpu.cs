using System.Globalization;
using Npgsql;

/// <summary>CPU seconds of processes on this machine, read from /proc (Linux), and the load average.</summary>
internal static class ProcCpu
{
    /// <summary>CPU seconds (user + system, every thread) of one process so far; 0 when it is gone.</summary>
    public static double Of(int pid)
    {
        try
        {
            return Ticks(pid) / 100.0; // USER_HZ
        }
        catch (IOException)
        {
            return 0;
        }
    }

    /// <summary>CPU seconds of a process and its children that are alive now (a postmaster and its backends).</summary>
    public static double OfTree(int? root) => root is null ? 0 : Sum(pid => pid == root || ParentOf(pid) == root);

    /// <summary>CPU seconds of every process whose command line contains <paramref name="text"/> (a shared broker).</summary>
    public static double OfCommandLine(string text) =>
        Sum(pid => File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ').Contains(text, StringComparison.Ordinal));

    /// <summary>CPU seconds of every process of this name (/proc/pid/comm, e.g. beam.smp).</summary>
    public static double OfName(string comm) => Sum(pid => File.ReadAllText($"/proc/{pid}/comm").Trim() == comm);

    /// <summary>The 1-minute load average.</summary>
    public static double Load1() => double.Parse(LoadAverage().Split(' ')[0], CultureInfo.InvariantCulture);

    /// <summary>/proc/loadavg as it reads.</summary>
    public static string LoadAverage() => File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Trim() : "0 ?";

    /// <summary>
    /// The pid of the PostgreSQL server listening on the connection string's port: the postgres process whose parent
    /// is not postgres and whose data directory's postmaster.pid names that port.
    /// </summary>
    public static int? PostmasterPid(string postgres)
    {
        var port = new NpgsqlConnectionStringBuilder(postgres).Port.ToString(CultureInfo.InvariantCulture);
        foreach (var pid in Pids())
        {
            try
            {
                var cmdline = File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ');
                var dataDirectory = DataDirectory(cmdline);
                if (cmdline.Contains("postgres", StringComparison.Ordinal) && !IsPostgres(ParentOf(pid)) && dataDirectory is not null
                    && File.Exists(Path.Combine(dataDirectory, "postmaster.pid"))
                    && File.ReadAllLines(Path.Combine(dataDirectory, "postmaster.pid")) is { Length: > 3 } lines && lines[3].Trim() == port)
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

    private static double Sum(Func<int, bool> include)
    {
        double ticks = 0;
        foreach (var pid in Pids())
        {
            try
            {
                if (include(pid))
                {
                    ticks += Ticks(pid);
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // the process ended while we looked, or is not ours to read
            }
        }

        return ticks / 100.0;
    }

    private static IEnumerable<int> Pids() =>
        Directory.EnumerateDirectories("/proc").Select(Path.GetFileName).Where(n => int.TryParse(n, out _)).Select(n => int.Parse(n!, CultureInfo.InvariantCulture));

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

    private static int ParentOf(int pid) => int.Parse(StatFields(pid)[1], CultureInfo.InvariantCulture);

    private static double Ticks(int pid)
    {
        var fields = StatFields(pid);
        return double.Parse(fields[11], CultureInfo.InvariantCulture) + double.Parse(fields[12], CultureInfo.InvariantCulture); // utime, stime
    }

    // The fields after "(comm)", which may itself contain spaces: [0] state, [1] ppid, ... [11] utime, [12] stime.
    private static string[] StatFields(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        return stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
    }
}
