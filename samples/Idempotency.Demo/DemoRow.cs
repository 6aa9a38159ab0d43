namespace Idempotency.Demo;

/// <summary>One line of the result table.</summary>
internal sealed record DemoRow(string Broker, string Store, int Produced, int Unique, long Delivered, long Redeliveries, long DuplicatesSkipped, long EffectsApplied, long Lost, long DeadLettered, int Crashes, double MessagesPerSecond)
{
    public bool Ok => EffectsApplied == Unique && Lost == 0;
}
