using System.Diagnostics;
using System.Globalization;

/// <summary>
/// CPU time spent by this process and by every PostgreSQL server process between two points, read from /proc: it
/// tells whether a scenario's extra cost per message is in the client (the library, Npgsql, librdkafka and the mock
/// cluster all live in this process) or in the database. Zero where /proc is missing. Also this process's managed
/// allocations and garbage-collection pauses (the mock cluster's memory is native and not in them), and how many
/// methods the JIT has compiled (a scenario that compiles many is not measured at its steady state).
/// </summary>
internal readonly record struct CpuMeter(TimeSpan Client, TimeSpan Postgres, long Allocated, TimeSpan GcPause, long JitMethods)
{
    private static readonly double TickSeconds = 1.0 / 100; // USER_HZ: 100 on every Linux the project runs on.

    public static CpuMeter Now()
    {
        using var self = Process.GetCurrentProcess();
        return new CpuMeter(self.TotalProcessorTime, PostgresTime(), GC.GetTotalAllocatedBytes(), GC.GetTotalPauseDuration(), System.Runtime.JitInfo.GetCompiledMethodCount());
    }

    /// <summary>Managed bytes allocated per message, and the share (%) of <paramref name="window"/> this process spent paused for garbage collection, since <paramref name="start"/>.</summary>
    public (double AllocatedBytes, double GcPausePercent) MemorySince(CpuMeter start, long messages, TimeSpan window) =>
        (messages <= 0 ? 0 : Math.Round((double)(Allocated - start.Allocated) / messages),
         window <= TimeSpan.Zero ? 0 : Math.Round(100 * (GcPause - start.GcPause) / window, 1));

    /// <summary>Microseconds of CPU per message since <paramref name="start"/>: (client, PostgreSQL).</summary>
    public (double Client, double Postgres) PerMessageSince(CpuMeter start, long messages) => messages <= 0
        ? (0, 0)
        : (Math.Round((Client - start.Client).TotalMicroseconds / messages, 1), Math.Round((Postgres - start.Postgres).TotalMicroseconds / messages, 1));

    private static TimeSpan PostgresTime()
    {
        if (!Directory.Exists("/proc"))
        {
            return TimeSpan.Zero;
        }

        double seconds = 0;
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));

                // pid (comm) state ppid ... utime is field 14, stime 15; comm may hold spaces, so split after ')'.
                var close = stat.LastIndexOf(')');
                var open = stat.IndexOf('(');
                if (open < 0 || close < 0 || !stat.AsSpan(open + 1, close - open - 1).StartsWith("postgres"))
                {
                    continue;
                }

                var fields = stat[(close + 2)..].Split(' ');
                seconds += (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) * TickSeconds;
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
            {
                // The process ended between listing and reading.
            }
        }

        return TimeSpan.FromSeconds(seconds);
    }
}
