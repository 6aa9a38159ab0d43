using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Idempotency.DependencyInjection;

/// <summary>
/// Fails the host start when <c>ConfigureHandler</c> names a handler that no consumer or processor uses: a typo there would
/// otherwise leave the real consumer on default options without a word.
/// </summary>
internal sealed class HandlerNameCheck(IEnumerable<RegisteredHandlerName> registered, IEnumerable<ConfiguredHandlerName> configured) : IHostedService
{
    /// <inheritdoc/>
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var known = registered.ToList();
        if (known.Count == 0)
        {
            // Options read by the application itself (no consumer registered through the builder): nothing to compare.
            return Task.CompletedTask;
        }

        var names = known.Select(r => r.Name).ToHashSet(StringComparer.Ordinal);
        var strays = configured.Select(c => c.Name).Where(n => !names.Contains(n)).Distinct(StringComparer.Ordinal).ToList();
        if (strays.Count > 0)
        {
            var registeredList = string.Join(", ", known.Select(r => $"'{r.Name}' ({r.Kind})"));
            throw new InvalidOperationException(
                $"ConfigureHandler(\"{string.Join("\", \"", strays)}\") matches no registered consumer or processor; registered: {registeredList}. Configure the handler under its consumer's name.");
        }

        return Task.CompletedTask;
    }

    /// <inheritdoc/>
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
