namespace Idempotency.Delivery;

/// <summary>
/// A bounded, least-recently-used memory of failing messages, by message id: how many handler attempts each spent, and
/// how many times it came back for reasons that are not attempts (a store outage or misconfiguration, a key held by
/// another worker, a shutdown). Brokers count deliveries, not handler attempts; this is where attempts come from.
/// </summary>
/// <remarks>
/// It lives in one process: a delivery that another process received, or one before a restart, is not seen, and the
/// count starts afresh (the broker's own limit, such as an SQS redrive policy, stays the backstop). Thread-safe.
/// </remarks>
/// <param name="capacity">How many messages it remembers; the least recently used is forgotten first.</param>
public sealed class AttemptLedger(int capacity)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, LinkedListNode<Entry>> _entries = new(StringComparer.Ordinal);
    private readonly LinkedList<Entry> _order = new();

    // Mirrors _entries.Count, readable without the lock: while nothing failed (the usual case) a settling message needs
    // neither its id nor the lock.
    private int _count;

    /// <summary>Gets how many messages are remembered.</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _entries.Count;
            }
        }
    }

    /// <summary>Gets a value indicating whether no message is remembered; read without the lock.</summary>
    /// <remarks>
    /// A message's own entry is written by the flow that processes it before that flow reads this again, so a message
    /// that has an entry never sees <see langword="true"/>; an entry of another message may appear at any time.
    /// </remarks>
    public bool IsEmpty => Volatile.Read(ref _count) == 0;

    /// <summary>Returns the failed handler attempts and the non-attempt returns remembered for a message.</summary>
    /// <param name="id">The message id.</param>
    /// <returns>Both counts; zeros for a message not remembered.</returns>
    public (int Failures, int Requeues) Get(string id)
    {
        lock (_gate)
        {
            if (_entries.TryGetValue(id, out var node))
            {
                _order.Remove(node);
                _order.AddFirst(node);
                return (node.Value.Failures, node.Value.Requeues);
            }

            return (0, 0);
        }
    }

    /// <summary>Returns the 1-based handler attempt the next processing of a message is.</summary>
    /// <param name="id">The message id.</param>
    /// <returns>The failed attempts remembered, plus one.</returns>
    public int NextAttempt(string id) => Get(id).Failures + 1;

    /// <summary>Records that the handler failed on a message (an attempt spent).</summary>
    /// <param name="id">The message id.</param>
    public void RecordFailure(string id) => Update(id, failures: 1, requeues: 0);

    /// <summary>Records that a message went back without its handler failing (not an attempt).</summary>
    /// <param name="id">The message id.</param>
    public void RecordRequeue(string id) => Update(id, failures: 0, requeues: 1);

    /// <summary>Records that a message's dead-letter destination did not take it (a return, not an attempt).</summary>
    /// <param name="id">The message id.</param>
    /// <returns>How many times its dead-lettering failed, this one included: it sets how long the message waits.</returns>
    internal int RecordDeadLetterFailure(string id) => Update(id, failures: 0, requeues: 1, deadLetterFailures: 1);

    /// <summary>Forgets a message that settled (acknowledged or dead-lettered).</summary>
    /// <param name="id">The message id.</param>
    public void Forget(string id)
    {
        lock (_gate)
        {
            if (_entries.Remove(id, out var node))
            {
                _order.Remove(node);
                Volatile.Write(ref _count, _entries.Count);
            }
        }
    }

    private int Update(string id, int failures, int requeues, int deadLetterFailures = 0)
    {
        lock (_gate)
        {
            if (_entries.TryGetValue(id, out var node))
            {
                _order.Remove(node);
            }
            else
            {
                node = new LinkedListNode<Entry>(new Entry(id));
                _entries[id] = node;
                while (_entries.Count > capacity && _order.Last is { } oldest)
                {
                    _entries.Remove(oldest.Value.Id);
                    _order.RemoveLast();
                }

                Volatile.Write(ref _count, _entries.Count);
            }

            node.Value.Failures += failures;
            node.Value.Requeues += requeues;
            node.Value.DeadLetterFailures += deadLetterFailures;
            _order.AddFirst(node);
            return node.Value.DeadLetterFailures;
        }
    }

    private sealed class Entry(string id)
    {
        public string Id { get; } = id;

        public int Failures { get; set; }

        public int Requeues { get; set; }

        public int DeadLetterFailures { get; set; }
    }
}
