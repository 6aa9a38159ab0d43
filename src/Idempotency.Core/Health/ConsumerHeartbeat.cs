namespace Idempotency.Health;

/// <summary>A consumer loop's liveness: the time of its last beat and whether it is running or deliberately paused.</summary>
public sealed class ConsumerHeartbeat
{
    private readonly TimeProvider _time;
    private long _lastBeatTicks;

    internal ConsumerHeartbeat(string name, TimeProvider time)
    {
        Name = name;
        _time = time;
        Beat();
    }

    /// <summary>Gets the consumer's name.</summary>
    public string Name { get; }

    /// <summary>Gets the time of the last beat.</summary>
    public DateTimeOffset LastBeat => new(Interlocked.Read(ref _lastBeatTicks), TimeSpan.Zero);

    /// <summary>Gets or sets the loop's state.</summary>
    public ConsumerState State { get; set; } = ConsumerState.Running;

    /// <summary>Gets or sets a short description of why the loop is paused or stopped.</summary>
    public string? Detail { get; set; }

    /// <summary>Records that the loop is alive; call it on every iteration (including empty polls).</summary>
    public void Beat() => Interlocked.Exchange(ref _lastBeatTicks, _time.GetUtcNow().UtcTicks);

    /// <summary>Marks a consumer that started (or started again): running, no detail, beating now. Every adapter calls it on start.</summary>
    internal void MarkStarted()
    {
        State = ConsumerState.Running;
        Detail = null;
        Beat();
    }

    /// <summary>Marks a consumer that stopped: health reports it, with the failure that stopped it or "stopped".</summary>
    /// <param name="failure">What stopped it, or <see langword="null"/> for a requested stop.</param>
    internal void MarkStopped(Exception? failure = null)
    {
        State = ConsumerState.Stopped;
        Detail = failure is null ? "stopped" : $"stopped: {failure.GetType().Name}: {failure.Message}";
    }
}
