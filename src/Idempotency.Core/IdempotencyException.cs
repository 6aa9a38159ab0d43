namespace Idempotency;

/// <summary>The base of every exception this library throws for its own failures.</summary>
public abstract class IdempotencyException : Exception
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="innerException">The cause, if any.</param>
    protected IdempotencyException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <summary>Gets a value indicating whether trying again later may succeed.</summary>
    public abstract bool IsTransient { get; }
}

/// <summary>A message's idempotency key is missing, empty or too long.</summary>
public sealed class InvalidIdempotencyKeyException : IdempotencyException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">Why the key is invalid.</param>
    public InvalidIdempotencyKeyException(string message)
        : base(message)
    {
    }

    /// <inheritdoc/>
    public override bool IsTransient => false;
}

/// <summary>A key was processed before with a different payload.</summary>
public sealed class PayloadMismatchException : IdempotencyException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="key">The key.</param>
    /// <param name="storedFingerprint">The fingerprint stored with the key.</param>
    /// <param name="payloadFingerprint">The fingerprint of the new payload.</param>
    public PayloadMismatchException(string key, ReadOnlyMemory<byte> storedFingerprint, ReadOnlyMemory<byte> payloadFingerprint)
        : base($"Key '{key}' was processed with payload {PayloadFingerprint.ToHex(storedFingerprint.Span)} and now arrived with {PayloadFingerprint.ToHex(payloadFingerprint.Span)}.")
    {
        StoredFingerprint = storedFingerprint;
        NewFingerprint = payloadFingerprint;
    }

    /// <summary>Gets the fingerprint stored with the key.</summary>
    public ReadOnlyMemory<byte> StoredFingerprint { get; }

    /// <summary>Gets the fingerprint of the payload that arrived.</summary>
    public ReadOnlyMemory<byte> NewFingerprint { get; }

    /// <inheritdoc/>
    public override bool IsTransient => false;
}

/// <summary>The idempotency store could not be reached or lost its connection; nothing was recorded.</summary>
public sealed class IdempotencyStoreUnavailableException : IdempotencyException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="message">What failed.</param>
    /// <param name="innerException">The driver's exception.</param>
    public IdempotencyStoreUnavailableException(string message, Exception? innerException = null)
        : base(message, innerException)
    {
    }

    /// <inheritdoc/>
    public override bool IsTransient => true;
}

/// <summary>This worker's claim on a key expired or was taken over before it could commit; its work was discarded.</summary>
public sealed class ClaimLostException : IdempotencyException
{
    /// <summary>Initializes a new instance.</summary>
    /// <param name="key">The key whose claim was lost.</param>
    public ClaimLostException(string key)
        : base($"The claim on key '{key}' was lost before commit (its lease expired or another worker took it over); nothing was committed.")
    {
        Key = key;
    }

    /// <summary>Gets the key.</summary>
    public string Key { get; }

    /// <inheritdoc/>
    public override bool IsTransient => true;
}
