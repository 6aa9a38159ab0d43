namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Configures the idempotency services: the store, handler options and consumers. Store and adapter packages add extension methods.</summary>
public interface IIdempotencyBuilder
{
    /// <summary>Gets the service collection being configured.</summary>
    IServiceCollection Services { get; }
}
