namespace Idempotency.Storage;

/// <summary>Prepares a store at host start (creates its schema, say); the start-up check runs every one before it checks the store.</summary>
public interface IStoreInitializer
{
    /// <summary>Prepares the store; runs its work once however often it is called.</summary>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <returns>A task that completes when the store is prepared.</returns>
    Task InitializeAsync(CancellationToken cancellationToken = default);
}
