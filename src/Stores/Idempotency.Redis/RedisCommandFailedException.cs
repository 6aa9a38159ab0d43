namespace Idempotency.Redis;

/// <summary>
/// Commands a handler queued on the store's MULTI/EXEC failed inside an EXEC that ran (WRONGTYPE, say). Redis does not
/// roll back: the other commands and the completion were applied, so the keys are recorded and their redeliveries
/// are duplicates. The processor reports the message <c>Failed</c>; the refused writes are not retried.
/// </summary>
public sealed class RedisCommandFailedException : IdempotencyException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="keys">The idempotency keys the EXEC recorded.</param>
    /// <param name="errors">The errors of the failed commands, in the order they were queued.</param>
    public RedisCommandFailedException(IReadOnlyList<string> keys, IReadOnlyList<Exception> errors)
        : base(Describe(keys, errors), errors?.FirstOrDefault())
    {
        Keys = keys;
        Errors = errors!;
    }

    /// <summary>Gets the idempotency keys recorded by the EXEC the failed commands were part of.</summary>
    public IReadOnlyList<string> Keys { get; }

    /// <summary>Gets the errors of the failed commands, in the order they were queued.</summary>
    public IReadOnlyList<Exception> Errors { get; }

    /// <inheritdoc/>
    /// <remarks>Never: the keys are recorded, so a retry is a duplicate.</remarks>
    public override bool IsTransient => false;

    private static string Describe(IReadOnlyList<string> keys, IReadOnlyList<Exception> errors)
    {
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(errors);
        return $"{errors.Count} Redis command(s) the handler queued failed inside the EXEC that recorded key(s) '{string.Join("', '", keys)}': " +
               $"{string.Join("; ", errors.Select(e => e.Message))}. Redis does not roll back: the other commands and the keys were applied, " +
               "so redeliveries are duplicates and these writes are not retried.";
    }
}
