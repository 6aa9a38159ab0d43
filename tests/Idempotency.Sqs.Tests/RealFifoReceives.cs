using System.Collections.Concurrent;
using System.Globalization;
using Amazon.SQS;
using Amazon.SQS.Model;

namespace Idempotency.Sqs.Tests;

/// <summary>
/// A client over fauxqs that records what the worker received and deleted per FIFO group and, with <c>collapse</c>,
/// gives the worker receives like real SQS's. fauxqs returns at most one message per group per receive; real SQS
/// returns several messages of a group, in order. So each message is sent in its own physical group
/// <c>group~seq</c> (<see cref="Physical"/>), and this client shows the worker the logical group and returns, like SQS,
/// a group's messages only from its oldest one not deleted, without gaps: a later one that comes without its
/// predecessors (which are in flight elsewhere, or were not returned) is made visible again and left out.
/// </summary>
internal sealed class RealFifoReceives
{
    private readonly object _gate = new();
    private readonly IAmazonSQS _inner;
    private readonly bool _collapse;
    private readonly Dictionary<string, HashSet<int>> _deletedSet = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<int>> _deleted = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (string Group, int Seq)> _byHandle = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<(string Group, int Seq), int> _receives = new();

    public RealFifoReceives(IAmazonSQS inner, bool collapse)
    {
        _inner = inner;
        _collapse = collapse;
        var proxy = FaultySqs.Wrap(inner);
        proxy.Intercept = (name, args) => name switch
        {
            nameof(IAmazonSQS.ReceiveMessageAsync) when args[0] is ReceiveMessageRequest request => ReceiveAsync(request, (CancellationToken)args[1]!),
            nameof(IAmazonSQS.DeleteMessageBatchAsync) when args[0] is DeleteMessageBatchRequest request => DeleteAsync(request, (CancellationToken)args[1]!),
            _ => null,
        };
        Client = proxy.Client;
    }

    /// <summary>Gets the client to give the worker.</summary>
    public IAmazonSQS Client { get; }

    public static string Physical(string group, int seq) => $"{group}~{seq.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>The group's messages in the order their deletes succeeded.</summary>
    public int[] Deleted(string group)
    {
        lock (_gate)
        {
            return _deleted.TryGetValue(group, out var seqs) ? [.. seqs] : [];
        }
    }

    /// <summary>How many receives returned the message to the worker.</summary>
    public int Count(string group, int seq) => _receives.GetValueOrDefault((group, seq));

    private static (string Group, int Seq) Identify(Message message)
    {
        var physical = message.Attributes["MessageGroupId"];
        var tilde = physical.IndexOf('~', StringComparison.Ordinal);
        return (tilde < 0 ? physical : physical[..tilde], int.Parse(message.Body, CultureInfo.InvariantCulture));
    }

    private async Task<ReceiveMessageResponse> ReceiveAsync(ReceiveMessageRequest request, CancellationToken cancellationToken)
    {
        var response = await _inner.ReceiveMessageAsync(request, cancellationToken);
        var kept = new List<Message>();
        var left = new List<Message>();
        lock (_gate)
        {
            var next = new Dictionary<string, int>(StringComparer.Ordinal);
            foreach (var message in response.Messages ?? [])
            {
                var (group, seq) = Identify(message);
                if (!next.TryGetValue(group, out var expected))
                {
                    expected = 1;
                    while (_deletedSet.TryGetValue(group, out var deleted) && deleted.Contains(expected))
                    {
                        expected++;
                    }
                }

                if (_collapse && seq != expected)
                {
                    left.Add(message);
                    continue;
                }

                next[group] = seq + 1;
                message.Attributes["MessageGroupId"] = group;
                _byHandle[message.ReceiptHandle] = (group, seq);
                _receives.AddOrUpdate((group, seq), 1, (_, n) => n + 1);
                kept.Add(message);
            }
        }

        if (left.Count > 0)
        {
            await _inner.ChangeMessageVisibilityBatchAsync(new ChangeMessageVisibilityBatchRequest
            {
                QueueUrl = request.QueueUrl,
                Entries = [.. left.Select((m, i) => new ChangeMessageVisibilityBatchRequestEntry { Id = i.ToString(CultureInfo.InvariantCulture), ReceiptHandle = m.ReceiptHandle, VisibilityTimeout = 0 })],
            }, CancellationToken.None);
        }

        response.Messages = kept;
        return response;
    }

    private async Task<DeleteMessageBatchResponse> DeleteAsync(DeleteMessageBatchRequest request, CancellationToken cancellationToken)
    {
        var response = await _inner.DeleteMessageBatchAsync(request, cancellationToken);
        var failed = (response.Failed ?? []).Select(f => f.Id).ToHashSet(StringComparer.Ordinal);
        lock (_gate)
        {
            foreach (var entry in request.Entries.Where(e => !failed.Contains(e.Id)))
            {
                if (_byHandle.TryGetValue(entry.ReceiptHandle, out var id))
                {
                    if (!_deletedSet.TryGetValue(id.Group, out var set))
                    {
                        _deletedSet[id.Group] = set = [];
                        _deleted[id.Group] = [];
                    }

                    if (set.Add(id.Seq))
                    {
                        _deleted[id.Group].Add(id.Seq);
                    }
                }
            }
        }

        return response;
    }
}
