namespace Idempotency.Storage;

/// <summary>What kind of failure an error from the store's own work (begin, claim, look-up, commit, ping) is.</summary>
/// <remarks>None of them is the message's fault except <see cref="WriteRejected"/>, which only a commit of the handler's own writes can be.</remarks>
public enum StoreFailureKind
{
    /// <summary>The store is unreachable or overloaded (refused, reset, timed out, failing over, out of memory): pause and back off.</summary>
    Outage = 0,

    /// <summary>The store answers but is set up wrong (authentication, missing table or column, permission denied): stop taking messages until fixed.</summary>
    Misconfiguration = 1,

    /// <summary>The store refused the handler's own writes at commit (a deferred constraint, say): the handler's failure.</summary>
    WriteRejected = 2,
}
