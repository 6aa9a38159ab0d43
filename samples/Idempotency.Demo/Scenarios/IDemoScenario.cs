using Idempotency.Demo.Ledgers;

namespace Idempotency.Demo.Scenarios;

/// <summary>One broker run end to end: produce the workload, consume it idempotently with crashes injected, count.</summary>
internal interface IDemoScenario
{
    string Broker { get; }

    Task<DemoRow> RunAsync(IDemoLedger ledger, Workload workload, int crashes, Action<double> progress, CancellationToken cancellationToken);
}
