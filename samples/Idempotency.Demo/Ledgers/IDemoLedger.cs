using Idempotency.Storage;

namespace Idempotency.Demo.Ledgers;

/// <summary>A store plus the business state the demo's handler changes inside the store's transaction.</summary>
internal interface IDemoLedger : IAsyncDisposable
{
    string StoreName { get; }

    IIdempotencyStore Store { get; }

    /// <summary>Applies one order's effect (credit the amount, count the application) in the message's transaction.</summary>
    ValueTask ApplyAsync(MessageContext context, CancellationToken cancellationToken);

    /// <summary>Reads back how many orders have an effect and how many effects were applied in all.</summary>
    Task<(long Orders, long Applications, long Total)> ReadAsync(CancellationToken cancellationToken);
}
