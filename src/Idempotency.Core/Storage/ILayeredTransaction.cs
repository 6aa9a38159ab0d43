namespace Idempotency.Storage;

/// <summary>
/// A store transaction that runs the transaction of another store, its source of truth, inside it (as the layered
/// Redis store does): a store's typed accessors, such as <c>context.GetNpgsqlTransaction()</c>, reach that store's
/// transaction through it.
/// </summary>
public interface ILayeredTransaction : IIdempotencyTransaction
{
    /// <summary>Gets the source of truth's transaction, which the handler's writes must join.</summary>
    /// <exception cref="InvalidOperationException">No such transaction is open (no key got past the front layer).</exception>
    IIdempotencyTransaction SourceTransaction { get; }
}
