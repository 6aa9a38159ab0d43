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

        // What the store can hold and do is checked here too, at start-up, not when the handler's processor is first
        // built (lazily, at the first message): the processor's constructor makes the same checks.
        if (services.GetService<IIdempotencyStore>() is { } store)
        {
            if (options.MaxKeyBytes > store.MaxKeyBytes)
            {
                errors.Add($"{nameof(IdempotencyOptions.MaxKeyBytes)} is {options.MaxKeyBytes}, but the '{store.Name}' store holds keys of at most {store.MaxKeyBytes} UTF-8 bytes. Lower {nameof(IdempotencyOptions.MaxKeyBytes)}.");
            }

            if (options.ClaimTiming == ClaimTiming.AtCommit && store is not IDeferredClaimStore)
            {
                errors.Add($"{nameof(IdempotencyOptions.ClaimTiming)} {nameof(ClaimTiming.AtCommit)} needs a store that can claim keys at commit (PostgreSQL, in-memory); the registered '{store.Name}' store cannot.");
            }
        }

        return errors.Count == 0
            ? ValidateOptionsResult.Success
            : ValidateOptionsResult.Fail(errors.Select(error => $"Idempotency handler '{name}': {error}"));
    }
}
