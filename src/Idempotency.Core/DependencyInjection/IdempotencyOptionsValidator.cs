using Idempotency;
using Idempotency.Storage;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Validates every handler's <see cref="IdempotencyOptions"/> at start-up, naming the handler and the setting.</summary>
internal sealed class IdempotencyOptionsValidator(IServiceProvider services) : IValidateOptions<IdempotencyOptions>
{
    public ValidateOptionsResult Validate(string? name, IdempotencyOptions options)
    {
        var errors = options.GetValidationErrors().ToList();

        // Claiming at commit is a store capability: say so at start-up, not at the first message.
        if (options.ClaimTiming == ClaimTiming.AtCommit
            && services.GetService<IIdempotencyStore>() is { } store and not IDeferredClaimStore)
        {
            errors.Add($"{nameof(IdempotencyOptions.ClaimTiming)} {nameof(ClaimTiming.AtCommit)} needs a store that can claim keys at commit (PostgreSQL, in-memory); the registered '{store.Name}' store cannot.");
        }

        return errors.Count == 0
            ? ValidateOptionsResult.Success
            : ValidateOptionsResult.Fail(errors.Select(error => $"Idempotency handler '{name}': {error}"));
    }
}
