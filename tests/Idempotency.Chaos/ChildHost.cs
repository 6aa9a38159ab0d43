using System.Diagnostics.Metrics;
using Idempotency.Diagnostics;

namespace Idempotency.Chaos;

/// <summary>
/// The consumer side: runs the real idempotent consumer of one broker over one store until told to stop (a line
/// "stop" on stdin) or killed. It reports on stdout, one line per event, so the orchestrator can count outcomes and
/// pick the moment of a SIGKILL:
/// <c>ready</c>; <c>R P|D|F|L</c> per processed, duplicate, failed attempt, dead-lettered message;
/// <c>H</c> when the handler starts holding (armed by "hold-handler" on stdin); <c>C</c> when a committed message is
/// held before the adapter acknowledges it (armed by "hold-commit").
/// </summary>
internal static class ChildHost
{
    private static int s_holdHandler;
    private static int s_holdCommit;
    private static int s_stallLease;

    /// <summary>Counts a lease-mode handler call down to the one armed by "stall-lease N"; true for that one.</summary>
    public static bool TakeLeaseStall() => Volatile.Read(ref s_stallLease) > 0 && Interlocked.Decrement(ref s_stallLease) == 0;

    public static TextWriter Output { get; } = TextWriter.Synchronized(new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true });

    public static async Task<int> RunAsync(ChildArgs args)
    {
        using var stop = new CancellationTokenSource();
        _ = Task.Run(() =>
        {
            while (Console.In.ReadLine() is { } line)
            {
                // "hold-handler N": hold in the N-th handler call from now; "hold-commit N": after the N-th committed result.
                var parts = line.Trim().Split(' ');
                var n = parts.Length > 1 ? int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) : 1;
                switch (parts[0])
                {
                    case "hold-handler": Interlocked.Exchange(ref s_holdHandler, n); break;
                    case "hold-commit": Interlocked.Exchange(ref s_holdCommit, n); break;
                    case "stall-lease": Interlocked.Exchange(ref s_stallLease, n); break;
                    case "stop": stop.Cancel(); return;
                }
            }

            stop.Cancel();
        });

        using var listener = StartListener();
        var store = await StoreRig.CreateChildStoreAsync(args).ConfigureAwait(false);
        await using var storeScope = store.ConfigureAwait(false);
        var handler = IdempotentHandler.Create(async (context, ct) =>
        {
            if (Volatile.Read(ref s_holdHandler) > 0 && Interlocked.Decrement(ref s_holdHandler) == 0)
            {
                // Held inside the handler, with the batch's store transaction open: the kill lands here.
                Output.WriteLine("H");
                await Task.Delay(TimeSpan.FromSeconds(30), ct).ConfigureAwait(false);
            }

            if (args.HandlerDelayMs > 0)
            {
                await Task.Delay(args.HandlerDelayMs, ct).ConfigureAwait(false);
            }

            if (context.Body.Span.StartsWith("poison"u8))
            {
                throw new InvalidOperationException("poison message: the handler always throws for it");
            }

            await store.ApplyEffectAsync(context, ct).ConfigureAwait(false);
        });
        // The soak ("defaults") keeps the processor's defaults too: only the handler name (and the retention below).
        var options = args.Get("defaults") is not null ? new IdempotencyOptions { HandlerName = "soak" } : new IdempotencyOptions
        {
            HandlerName = "chaos",
            Retry = new RetryOptions { MaxAttempts = 3, InitialDelay = TimeSpan.FromMilliseconds(20), MaxDelay = TimeSpan.FromMilliseconds(100) },
            StoreUnavailableBackoff = new BackoffOptions { InitialDelay = TimeSpan.FromMilliseconds(200), MaxDelay = TimeSpan.FromSeconds(1) },
        };
        if (args.Get("retention-s") is { } retention)
        {
            options.Retention = TimeSpan.FromSeconds(int.Parse(retention, System.Globalization.CultureInfo.InvariantCulture));
        }

        var processor = new IdempotentProcessor(store.Store, handler, options);
        if (args.Get("prune-s") is { } prune && store.Store is Idempotency.Postgres.PostgresIdempotencyStore postgres)
        {
            // Soak: the retention pruner deletes expired keys while the consumer runs; "P <rows>" per pass.
            // Its default batch size and pauses; only the interval is the soak's (PostgresRetentionService's loop).
            var pruner = new Idempotency.Postgres.Retention.PostgresRetentionPruner(postgres, new Idempotency.Postgres.Retention.PostgresRetentionOptions
            {
                Interval = TimeSpan.FromSeconds(int.Parse(prune, System.Globalization.CultureInfo.InvariantCulture)),
            });
            _ = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested)
                {
                    try
                    {
                        await Task.Delay(pruner.Options.Interval, stop.Token).ConfigureAwait(false);
                        Output.WriteLine("P " + await pruner.PruneOnceAsync(stop.Token).ConfigureAwait(false));
                    }
                    catch (OperationCanceledException)
                    {
                        return;
                    }
                    catch (Exception e) when (e is Npgsql.NpgsqlException or TimeoutException)
                    {
                        Console.Error.WriteLine("prune failed: " + e.Message);
                    }
                }
            });
        }

        await BrokerRig.RunChildAsync(args, processor, () => Output.WriteLine("ready"), stop.Token).ConfigureAwait(false);
        Output.WriteLine("stopped");
        return 0;
    }

    private static MeterListener StartListener()
    {
        var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (instrument.Meter.Name == IdempotencyTelemetry.MeterName && instrument.Name is "idempotency.messages.processed"
                    or "idempotency.messages.duplicate" or "idempotency.messages.failed" or "idempotency.messages.dead_lettered")
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, _, _, _) =>
        {
            var code = instrument.Name switch
            {
                "idempotency.messages.processed" => "P",
                "idempotency.messages.duplicate" => "D",
                "idempotency.messages.failed" => "F",
                _ => "L",
            };
            Output.WriteLine("R " + code);
            if (code is "P" or "D" && Volatile.Read(ref s_holdCommit) > 0 && Interlocked.Decrement(ref s_holdCommit) == 0)
            {
                // The processor records the result after its store transaction committed and before it returns to the
                // adapter, which acknowledges only then: holding here puts the kill between commit and ack.
                Output.WriteLine("C");
                Thread.Sleep(TimeSpan.FromSeconds(30));
            }
        });
        listener.Start();
        return listener;
    }
}

/// <summary>Arguments of the child: <c>--child name=value ...</c>.</summary>
internal sealed class ChildArgs(Dictionary<string, string> values)
{
    public string this[string name] => values.TryGetValue(name, out var v) ? v : throw new ArgumentException($"child argument '{name}' missing");

    public string Broker => this["broker"];

    public string StoreKind => this["store"];

    public int HandlerDelayMs => values.TryGetValue("delay", out var v) ? int.Parse(v, System.Globalization.CultureInfo.InvariantCulture) : 0;

    public string? Get(string name) => values.TryGetValue(name, out var v) ? v : null;

    public static ChildArgs Parse(IEnumerable<string> args) =>
        new(args.Select(a => a.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : string.Empty, StringComparer.Ordinal));

    public static IEnumerable<string> Format(IReadOnlyDictionary<string, string> values) => values.Select(kv => kv.Key + "=" + kv.Value);
}
