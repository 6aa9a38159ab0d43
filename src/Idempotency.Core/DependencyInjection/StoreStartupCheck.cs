using Idempotency.Storage;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Idempotency.DependencyInjection;

/// <summary>
/// Checks the registered store before any consumer starts: runs the store's initializers (such as
/// <c>ApplyPostgresSchemaOnStart()</c>), then <see cref="IIdempotencyStore.CheckAsync"/>. A misconfiguration (missing
/// schema, wrong password) fails the host's start with the store's description of the fix; an outage is only logged,
/// since consumers wait for the store by themselves.
/// </summary>
internal sealed partial class StoreStartupCheck(IServiceProvider services, ILogger<StoreStartupCheck>? logger = null) : IHostedLifecycleService
{
    private readonly ILogger _logger = (ILogger?)logger ?? NullLogger.Instance;

    public async Task StartingAsync(CancellationToken cancellationToken)
    {
        var store = services.GetService<IIdempotencyStore>();
        if (store is null)
        {
            return;
        }

        foreach (var initializer in services.GetServices<IStoreInitializer>())
        {
            await initializer.InitializeAsync(cancellationToken).ConfigureAwait(false);
        }

        var failure = await store.CheckAsync(cancellationToken).ConfigureAwait(false);
        switch (failure)
        {
            case { Kind: StoreFailureKind.Misconfiguration } misconfigured:
                throw new InvalidOperationException($"The idempotency store '{store.Name}' is misconfigured: {misconfigured.Description}");
            case { } outage:
                LogOutageAtStart(_logger, store.Name, outage.Description);
                break;
        }
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    [LoggerMessage(EventId = 1200, Level = LogLevel.Warning, Message = "The idempotency store {Store} does not answer at start ({Problem}); consumers wait for it")]
    private static partial void LogOutageAtStart(ILogger logger, string store, string problem);
}
