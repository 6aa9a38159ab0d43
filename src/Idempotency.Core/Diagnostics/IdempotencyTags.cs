namespace Idempotency.Diagnostics;

/// <summary>Tag names on this library's metrics and spans; the <c>messaging.*</c> ones follow OpenTelemetry's conventions.</summary>
public static class IdempotencyTags
{
    /// <summary>The broker: <c>kafka</c>, <c>rabbitmq</c>, <c>aws_sqs</c>.</summary>
    public const string Broker = "messaging.system";

    /// <summary>The topic or queue.</summary>
    public const string Destination = "messaging.destination.name";

    /// <summary>The handler name that scopes keys.</summary>
    public const string Handler = "idempotency.handler";

    /// <summary>The <see cref="ProcessingOutcome"/>, in snake case.</summary>
    public const string Outcome = "idempotency.outcome";

    /// <summary>Why a duplicate arrived: <c>redelivery</c>, <c>republish</c>, <c>rebalance</c>.</summary>
    public const string DuplicateCause = "idempotency.duplicate.cause";

    /// <summary>The store: <c>postgres</c>, <c>redis</c>, <c>memory</c>.</summary>
    public const string Store = "idempotency.store";

    /// <summary>The store operation timed: <c>begin</c>, <c>claim</c>, <c>commit</c>.</summary>
    public const string Operation = "idempotency.operation";

    /// <summary>The idempotency key, on spans only (never on metrics: unbounded cardinality).</summary>
    public const string Key = "idempotency.key";

    /// <summary>Why a message was dead-lettered.</summary>
    public const string Reason = "idempotency.reason";
}
