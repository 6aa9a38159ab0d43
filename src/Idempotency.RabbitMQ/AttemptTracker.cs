namespace Idempotency.RabbitMQ;

/// <summary>
/// A bounded, least-recently-used memory of failing messages: how many failed attempts each had, and how many times it was
/// requeued for reasons that are not attempts (store outage, key leased elsewhere). Classic queues do not count deliveries,
/// so this is where attempts come from; on quorum queues it corrects <c>x-delivery-count</c> for the non-attempt requeues.
/// It lives in one process: another consumer, or a restart, starts counting afresh.
/// </summary>
internal sealed class AttemptTracker(int capacity)
{
    private readonly Lock _gate = new();
    private readonly Dictionary<string, LinkedListNode<Entry>> _entries = new(StringComparer.Ordinal);
    private readonly LinkedList<Entry> _order = new();

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

    /// <summary>Returns the failed attempts and the non-attempt requeues remembered for a message.</summary>
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

    public void RecordFailure(string id) => Update(id, failures: 1, requeues: 0);

    public void RecordRequeue(string id) => Update(id, failures: 0, requeues: 1);

    public void Forget(string id)
    {
        lock (_gate)
        {
            if (_entries.Remove(id, out var node))
            {
                _order.Remove(node);
            }
        }
    }

    private void Update(string id, int failures, int requeues)
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
            }

            node.Value.Failures += failures;
            node.Value.Requeues += requeues;
            _order.AddFirst(node);
        }
    }

    private sealed class Entry(string id)
    {
        public string Id { get; } = id;

        public int Failures { get; set; }

        public int Requeues { get; set; }
    }
}
