using System.Diagnostics;
using Npgsql;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// A private PostgreSQL primary with a synchronous streaming standby (<c>scripts/services.sh pg-ha-up</c>, ports
/// 5433/5434), never the shared server: <c>IDEMPOTENCY_PG_HA</c> is the multi-host connection string (read-write
/// target), <c>IDEMPOTENCY_PG_HA_SERVICES</c> the script that kills the primary, promotes the standby and rebuilds
/// the pair. Unset: a failure saying how to start it.
/// </summary>
public sealed class PostgresStandbyFixture : IAsyncLifetime
{
    /// <summary>The variable with the multi-host connection string.</summary>
    public const string Variable = "IDEMPOTENCY_PG_HA";

    /// <summary>The variable with the services script that started the pair.</summary>
    public const string ServicesVariable = "IDEMPOTENCY_PG_HA_SERVICES";

    /// <summary>Gets the multi-host connection string (<c>Target Session Attributes=read-write</c>).</summary>
    public string ConnectionString { get; private set; } = string.Empty;

    // Whether the pair's variables are set: without them there is no pair to leave behind at the end.
    private bool _configured;

    /// <inheritdoc/>
    public async ValueTask InitializeAsync()
    {
        ConnectionString = ServiceEnvironment.Get(Variable) ?? throw new InvalidOperationException(
            $"{Variable} is not set, so there is no PostgreSQL primary + standby to test against. Start the private pair " +
            "(127.0.0.1:5433 primary, 5434 synchronous standby) with `scripts/services.sh pg-ha-up` and load its variables " +
            "with `eval \"$(scripts/services.sh pg-ha-env)\"` (`./build.sh test` does both). See docs/scale-out.md.");
        _ = ServiceEnvironment.Get(ServicesVariable) ?? throw new InvalidOperationException($"{ServicesVariable} is not set: load `scripts/services.sh pg-ha-env`.");
        _configured = true;
        await EnsurePairAsync();
    }

    /// <summary>Makes sure the pair runs as built (primary read-write on 5433, standby streaming synchronously): rebuilt from scratch after a failover test.</summary>
    public async Task EnsurePairAsync()
    {
        if ((await RunAsync("pg-ha-up", throwOnError: false)).ExitCode != 0)
        {
            await RunAsync("pg-ha-down");
            await RunAsync("pg-ha-up");
        }
    }

    /// <summary>SIGKILLs the pair's primary (its postmaster, by its own pid file).</summary>
    public Task KillPrimaryAsync() => RunAsync("pg-ha-kill-primary");

    /// <summary>Makes the primary replicate asynchronously until the pair is next rebuilt or brought up.</summary>
    public Task MakeAsynchronousAsync() => RunAsync("pg-ha-async");

    /// <summary>Promotes the standby (pg_ctl promote, waits until it accepts writes).</summary>
    public Task PromoteStandbyAsync() => RunAsync("pg-ha-promote");

    /// <summary>Opens a data source on the pair with short timeouts, so a dead primary shows quickly.</summary>
    public NpgsqlDataSource CreateDataSource() => NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(ConnectionString)
    {
        Timeout = 3,
        CommandTimeout = 10,
        HostRecheckSeconds = 1,
        MaxPoolSize = 32,
    }.ConnectionString);

    private static async Task<(int ExitCode, string Output)> RunAsync(string command, bool throwOnError = true)
    {
        var script = ServiceEnvironment.Get(ServicesVariable)!;
        using var process = Process.Start(new ProcessStartInfo(script, [command]) { RedirectStandardError = true, RedirectStandardOutput = true })!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        if (throwOnError && process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{script} {command} failed ({process.ExitCode}): {error}");
        }

        return (process.ExitCode, await output + error);
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        // Leave a whole pair behind for the next run; without one (the variable unset) the start already said what to do.
        if (_configured)
        {
            await EnsurePairAsync();
        }
    }
}
