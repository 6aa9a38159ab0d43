namespace Idempotency.Testing;

/// <summary>What one scenario came to.</summary>
/// <param name="Scenario">The scenario.</param>
/// <param name="Key">The idempotency key it used (unique per scenario and run).</param>
/// <param name="Outcomes">The outcome of every delivery, in the order they finished.</param>
/// <param name="EffectCount">How many times the effect happened, as the caller's count reported it after the scenario.</param>
/// <param name="Failure">Why the scenario failed, or <see langword="null"/> when the effect happened exactly once.</param>
public sealed record RedeliveryScenarioResult(
    RedeliveryScenario Scenario,
    string Key,
    IReadOnlyList<ProcessingOutcome> Outcomes,
    int EffectCount,
    string? Failure)
{
    /// <summary>Gets a value indicating whether the effect happened exactly once.</summary>
    public bool Passed => Failure is null;

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Scenario} (key {Key}): {(Passed ? "passed" : "FAILED: " + Failure)}; outcomes [{string.Join(", ", Outcomes)}], effect applied {EffectCount} time(s)";
}

/// <summary>The results of a run of <see cref="RedeliveryScenarioRunner"/>.</summary>
public sealed class RedeliveryReport
{
    internal RedeliveryReport(IReadOnlyList<RedeliveryScenarioResult> results) => Results = results;

    /// <summary>Gets one result per scenario, in the order they ran.</summary>
    public IReadOnlyList<RedeliveryScenarioResult> Results { get; }

    /// <summary>Gets a value indicating whether every scenario applied the effect exactly once.</summary>
    public bool Passed => Results.All(r => r.Passed);

    /// <summary>Throws when a scenario did not apply the effect exactly once; the message lists every scenario.</summary>
    /// <exception cref="RedeliveryScenarioException">A scenario failed.</exception>
    public void AssertExactlyOnce()
    {
        if (!Passed)
        {
            throw new RedeliveryScenarioException(this);
        }
    }

    /// <inheritdoc/>
    public override string ToString() => string.Join(Environment.NewLine, Results);
}

/// <summary>A redelivery scenario applied a handler's effect other than exactly once.</summary>
public sealed class RedeliveryScenarioException : Exception
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="report">The report of the run.</param>
    public RedeliveryScenarioException(RedeliveryReport report)
        : base("The effect did not happen exactly once in every redelivery scenario:" + Environment.NewLine + report)
    {
        Report = report;
    }

    /// <summary>Gets the report of the run.</summary>
    public RedeliveryReport Report { get; }
}
