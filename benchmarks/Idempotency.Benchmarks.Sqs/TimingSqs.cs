using System.Collections.Concurrent;
using System.Diagnostics;
using System.Reflection;
using Amazon.SQS;
using Amazon.SQS.Model;

namespace Idempotency.Benchmarks.Sqs;

/// <summary>
/// Wraps the SQS client of every scenario the same way: records when each message arrived (receive returned) and when
/// its delete was confirmed, so latency means the same thing for the plain worker and ours.
/// </summary>
public class TimingSqs : DispatchProxy
{
    private readonly ConcurrentDictionary<string, long> _receivedAt = new(StringComparer.Ordinal);
    private readonly ConcurrentBag<double> _latenciesMs = [];
    private long _deleted;

    public IAmazonSQS Inner { get; private set; } = null!;

    public IAmazonSQS Client => (IAmazonSQS)(object)this;

    public long Deleted => Interlocked.Read(ref _deleted);

    public IReadOnlyCollection<double> LatenciesMs => _latenciesMs;

    public static TimingSqs Wrap(IAmazonSQS inner)
    {
        var proxy = (TimingSqs)(object)Create<IAmazonSQS, TimingSqs>();
        proxy.Inner = inner;
        return proxy;
    }

    public void Reset()
    {
        _receivedAt.Clear();
        _latenciesMs.Clear();
        Interlocked.Exchange(ref _deleted, 0);
    }

    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        args ??= [];
        return targetMethod.Name switch
        {
            nameof(IAmazonSQS.ReceiveMessageAsync) when args[0] is ReceiveMessageRequest request => ReceiveAsync(request, (CancellationToken)args[1]!),
            nameof(IAmazonSQS.DeleteMessageBatchAsync) when args[0] is DeleteMessageBatchRequest request => DeleteAsync(request, (CancellationToken)args[1]!),
            _ => Forward(targetMethod, args),
        };
    }

    private object? Forward(MethodInfo method, object?[] args)
    {
        try
        {
            return method.Invoke(Inner, args);
        }
        catch (TargetInvocationException exception) when (exception.InnerException is not null)
        {
            throw exception.InnerException;
        }
    }

    private async Task<ReceiveMessageResponse> ReceiveAsync(ReceiveMessageRequest request, CancellationToken cancellationToken)
    {
        var response = await Inner.ReceiveMessageAsync(request, cancellationToken);
        var now = Stopwatch.GetTimestamp();
        foreach (var message in response.Messages ?? [])
        {
            _receivedAt[message.ReceiptHandle] = now;
        }

        return response;
    }

    private async Task<DeleteMessageBatchResponse> DeleteAsync(DeleteMessageBatchRequest request, CancellationToken cancellationToken)
    {
        var response = await Inner.DeleteMessageBatchAsync(request, cancellationToken);
        var now = Stopwatch.GetTimestamp();
        var failed = new HashSet<string>((response.Failed ?? []).Select(f => f.Id), StringComparer.Ordinal);
        foreach (var entry in request.Entries)
        {
            if (failed.Contains(entry.Id))
            {
                continue;
            }

            if (_receivedAt.TryRemove(entry.ReceiptHandle, out var at))
            {
                _latenciesMs.Add(Stopwatch.GetElapsedTime(at, now).TotalMilliseconds);
            }

            Interlocked.Increment(ref _deleted);
        }

        return response;
    }
}
