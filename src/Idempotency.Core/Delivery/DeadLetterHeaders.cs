namespace Idempotency.Delivery;

/// <summary>Header (attribute) names every adapter writes on a dead-lettered message.</summary>
public static class DeadLetterHeaders
{
    /// <summary>The reason code: <c>handler_failed</c>, <c>invalid_key</c>, <c>payload_mismatch</c>.</summary>
    public const string ReasonCode = "x-idempotency-reason";

    /// <summary>The failure's exception type.</summary>
    public const string ErrorType = "x-idempotency-error-type";

    /// <summary>The failure's message (never the payload).</summary>
    public const string ErrorMessage = "x-idempotency-error-message";

    /// <summary>How many attempts were made.</summary>
    public const string Attempts = "x-idempotency-attempts";

    /// <summary>The handler name.</summary>
    public const string Handler = "x-idempotency-handler";

    /// <summary>The idempotency key, when the message had one.</summary>
    public const string Key = "x-idempotency-key";

    /// <summary>The fingerprint stored with the key (payload mismatches).</summary>
    public const string StoredFingerprint = "x-idempotency-stored-fingerprint";

    /// <summary>The fingerprint of the dead-lettered payload (payload mismatches).</summary>
    public const string PayloadFingerprint = "x-idempotency-payload-fingerprint";

    /// <summary>Builds the common headers for a dead-letter.</summary>
    /// <param name="result">The processing result.</param>
    /// <param name="decision">The dead-letter decision.</param>
    /// <param name="handler">The handler name.</param>
    /// <param name="attempts">The number of attempts made.</param>
    /// <returns>Header names and values; adapters add their broker's own (topic, offset, queue).</returns>
    public static Dictionary<string, string> Create(ProcessingResult result, DeliveryDecision decision, string handler, int attempts)
    {
        ArgumentNullException.ThrowIfNull(result);
        var headers = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [ReasonCode] = decision.ReasonCode ?? "unknown",
            [ErrorType] = result.Exception?.GetType().FullName ?? "none",
            [ErrorMessage] = Truncate(decision.Reason ?? result.Exception?.Message ?? string.Empty, 1024),
            [Attempts] = attempts.ToString(System.Globalization.CultureInfo.InvariantCulture),
            [Handler] = handler,
        };
        if (result.Message.Key is { Length: > 0 } key)
        {
            headers[Key] = Truncate(key, 1024);
        }

        if (!result.StoredFingerprint.IsEmpty)
        {
            headers[StoredFingerprint] = Idempotency.PayloadFingerprint.ToHex(result.StoredFingerprint.Span);
        }

        if (!result.PayloadFingerprint.IsEmpty)
        {
            headers[PayloadFingerprint] = Idempotency.PayloadFingerprint.ToHex(result.PayloadFingerprint.Span);
        }

        return headers;
    }

    private static string Truncate(string value, int max) => value.Length <= max ? value : value[..max];
}
