using Amazon.Runtime;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Sqs;
using Idempotency.TestSupport;

namespace Idempotency.Chaos;

/// <summary>
/// SQS on the fauxqs emulator: a standard queue and a dead-letter queue named per run. The child connects through a
/// <see cref="TcpProxy"/> with a 2 s visibility timeout. Fault: the proxy cut for longer than the visibility timeout,
/// so the heartbeat cannot extend it and visibility expires mid-handler; the message comes back (to the other poller
/// or the next child) while the first handler may still run, and only the store decides which one commits.
/// </summary>
/// <remarks>
/// <c>sqs-fifo</c>: FIFO queue and FIFO DLQ; each key belongs to one of <see cref="FifoGroups"/> message groups (a
/// re-send goes to its key's group), every send has its own deduplication id (so re-sends are delivered and are the
/// store's to skip). The scenario checks each group's order in the business table.
/// </remarks>
internal sealed class SqsRig(bool fifo = false) : BrokerRig
{
    public const int FifoGroups = 6;

    private readonly string _serviceUrl = Environment.GetEnvironmentVariable("IDEMPOTENCY_SQS") is { Length: > 0 } v
        ? v
        : throw new InvalidOperationException("$IDEMPOTENCY_SQS is not set: run ./build.sh chaos (it starts the services and exports it).");

    private TcpProxy? _proxy;
    private AmazonSQSClient? _sqs;
    private string _queueUrl = "";
    private string _dlqUrl = "";

    /// <summary>FIFO: what the drained DLQ held (see <see cref="ReadDeadLettersAsync"/>).</summary>
    private readonly List<string> _drainedDeadLetters = [];

    public override string Name => fifo ? "sqs-fifo" : "sqs";

    public override string? OrderGroup(string key)
    {
        if (!fifo)
        {
            return null;
        }

        var h = 17;
        foreach (var c in key)
        {
            h = unchecked((h * 31) + c);
        }

        return "g" + ((h & 0x7FFFFFFF) % FifoGroups).ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    private AmazonSQSClient Sqs => _sqs ?? throw new InvalidOperationException("not set up");

    public override string Diagnostics => $"the child's broker proxy accepted {_proxy?.AcceptedConnections ?? 0} connections";

    public override IReadOnlyList<FaultKind> Faults =>
    [
        new("sqs-visibility-expiry", async (rng, ct) =>
        {
            _proxy!.Stop();
            try { await Task.Delay(rng.Next(2500, 4000), ct); }
            finally { _proxy.Start(); }
        }),
    ];

    public static AmazonSQSClient Client(string serviceUrl) =>
        new(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = serviceUrl, AuthenticationRegion = "us-east-1", MaxErrorRetry = 1, Timeout = TimeSpan.FromSeconds(5) });

    public override async Task SetupAsync(string runId)
    {
        var uri = new Uri(_serviceUrl);
        _proxy = new TcpProxy(uri.Host is "localhost" ? "127.0.0.1" : uri.Host, uri.Port);
        _sqs = Client(_serviceUrl);
        var suffix = fifo ? ".fifo" : "";
        var attributes = fifo ? new Dictionary<string, string> { ["FifoQueue"] = "true" } : null;
        _queueUrl = (await Sqs.CreateQueueAsync(new CreateQueueRequest { QueueName = "chaos-" + runId + suffix, Attributes = attributes })).QueueUrl;
        _dlqUrl = (await Sqs.CreateQueueAsync(new CreateQueueRequest { QueueName = "chaos-" + runId + "-dlq" + suffix, Attributes = attributes })).QueueUrl;
    }

    public override async Task ProduceAsync(IReadOnlyList<ChaosMessage> messages)
    {
        foreach (var chunk in messages.Chunk(10))
        {
            var entries = chunk.Select((m, i) => new SendMessageBatchRequestEntry
            {
                Id = i.ToString(System.Globalization.CultureInfo.InvariantCulture),
                MessageBody = m.Body,
                MessageGroupId = OrderGroup(m.Key),
                MessageDeduplicationId = fifo ? Guid.NewGuid().ToString("N") : null,
                MessageAttributes = new() { [SqsIdempotencyOptions.DefaultKeyAttributeName] = new MessageAttributeValue { DataType = "String", StringValue = m.Key } },
            }).ToList();
            var response = await Sqs.SendMessageBatchAsync(new SendMessageBatchRequest { QueueUrl = _queueUrl, Entries = entries });
            if (response.Failed is { Count: > 0 })
            {
                throw new InvalidOperationException("SendMessageBatch failed: " + response.Failed[0].Message);
            }
        }
    }

    public override void AddChildArgs(IDictionary<string, string> args)
    {
        args["sqs"] = $"http://127.0.0.1:{_proxy!.Port}";
        args["queue"] = _queueUrl;
        args["dlq"] = _dlqUrl;
    }

    public override void AddDefaultPathChildArgs(IDictionary<string, string> args)
    {
        args["sqs"] = _serviceUrl;
        args["queue"] = _queueUrl;
        args["dlq"] = _dlqUrl;
        args["defaults"] = "1";
    }

    public override async Task<IReadOnlyList<string>> ReadDeadLettersAsync()
    {
        if (fifo)
        {
            return await DrainFifoDeadLettersAsync();
        }

        // Receive everything (hidden for a while), then make it visible again: a non-destructive read.
        var keys = new List<string>();
        var handles = new List<string>();
        await ReceiveAllAsync(_dlqUrl, m =>
        {
            keys.Add(KeyOf(m));
            handles.Add(m.ReceiptHandle);
            return Task.CompletedTask;
        });

        await MakeVisibleAsync(_dlqUrl, handles);
        return keys;
    }

    /// <summary>
    /// A FIFO receive shows only the head of each message group while it is in flight, so a non-destructive read sees
    /// one dead letter per group (the DLQ keeps its poison messages' groups): the FIFO DLQ is drained instead, each
    /// message received, recorded and deleted, and the rig returns everything it ever drained. Only the consumer writes
    /// to the DLQ and only this reads it.
    /// </summary>
    private async Task<IReadOnlyList<string>> DrainFifoDeadLettersAsync()
    {
        await ReceiveAllAsync(_dlqUrl, async m =>
        {
            _drainedDeadLetters.Add(KeyOf(m));
            await Sqs.DeleteMessageAsync(_dlqUrl, m.ReceiptHandle);
        });

        return [.. _drainedDeadLetters];
    }

    public override async Task<string> SnapshotAsync()
    {
        var attributes = await Sqs.GetQueueAttributesAsync(new GetQueueAttributesRequest
        {
            QueueUrl = _queueUrl,
            AttributeNames = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"],
        });
        string A(string name) => attributes.Attributes?.GetValueOrDefault(name) ?? "?";
        return $"queue: {A("ApproximateNumberOfMessages")} visible, {A("ApproximateNumberOfMessagesNotVisible")} in flight, {A("ApproximateNumberOfMessagesDelayed")} delayed";
    }

    public override async Task<BrokerInspection> InspectAsync(IReadOnlyCollection<string> keys)
    {
        // Messages the stopped consumer had in flight come back when their visibility expires (2 s): wait for that
        // (bounded), then receive everything visible and make it visible again. A key is deliverable when one of its
        // messages is receivable; a key not found while messages are still in flight cannot be called lost.
        var summary = await SnapshotAsync();
        var inFlight = await InFlightAsync();
        for (var waited = 0; inFlight > 0 && waited < 40; waited++)
        {
            await Task.Delay(250);
            inFlight = await InFlightAsync();
        }

        var found = new HashSet<string>(StringComparer.Ordinal);
        var handles = new List<string>();
        await ReceiveAllAsync(_queueUrl, m =>
        {
            found.Add(KeyOf(m));
            handles.Add(m.ReceiptHandle);
            return Task.CompletedTask;
        });

        await MakeVisibleAsync(_queueUrl, handles);
        if (fifo)
        {
            // A FIFO receive shows only the head of each group (the rest is locked behind it): a key is deliverable
            // when its group still has a head, and lost when its group is empty.
            var heads = found.Where(k => k.Length > 0).ToDictionary(k => OrderGroup(k)!, k => k, StringComparer.Ordinal);
            var fifoResult = keys.ToDictionary(
                k => k,
                k => found.Contains(k)
                    ? new KeyPosition(true, $"the head of group {OrderGroup(k)}")
                    : heads.TryGetValue(OrderGroup(k)!, out var head)
                        ? new KeyPosition(true, $"group {OrderGroup(k)} still holds messages (head {head})")
                        : inFlight > 0
                            ? new KeyPosition(true, $"group {OrderGroup(k)} shows no head, but {inFlight} messages are in flight")
                            : new KeyPosition(false, $"deleted: group {OrderGroup(k)} is empty"),
                StringComparer.Ordinal);
            return new BrokerInspection(fifoResult, summary + $"; after the consumer stopped: {heads.Count} groups with messages, {inFlight} in flight");
        }

        var result = keys.ToDictionary(
            k => k,
            k => found.Contains(k)
                ? new KeyPosition(true, "receivable from the queue")
                : inFlight > 0
                    ? new KeyPosition(true, $"not receivable, but {inFlight} messages are still in flight (possibly this one)")
                    : new KeyPosition(false, $"deleted: not in the queue ({handles.Count} messages left, none in flight)"),
            StringComparer.Ordinal);
        return new BrokerInspection(result, summary + $"; after the consumer stopped: {handles.Count} receivable, {inFlight} in flight");
    }

    public override async Task SimulateLossAsync(ChaosMessage lost, ChaosMessage kept)
    {
        await ProduceAsync([lost]);
        await ProduceAsync([kept]);
        var others = new List<string>();
        for (var attempt = 0; attempt < 20; attempt++)
        {
            var response = await Sqs.ReceiveMessageAsync(new ReceiveMessageRequest
            {
                QueueUrl = _queueUrl, MaxNumberOfMessages = 10, WaitTimeSeconds = 0, VisibilityTimeout = 30, MessageAttributeNames = ["All"],
            });
            var found = false;
            foreach (var m in response.Messages ?? [])
            {
                if (KeyOf(m) == lost.Key)
                {
                    await Sqs.DeleteMessageAsync(_queueUrl, m.ReceiptHandle);
                    found = true;
                }
                else
                {
                    others.Add(m.ReceiptHandle);
                }
            }

            if (found)
            {
                await MakeVisibleAsync(_queueUrl, others);
                return;
            }
        }

        await MakeVisibleAsync(_queueUrl, others);
        throw new InvalidOperationException($"{lost.Key} was not received");
    }

    /// <summary>
    /// Receives every visible message of <paramref name="queueUrl"/> (until two receives in a row come back empty), each
    /// hidden for 30 s, and hands each to <paramref name="each"/> before the next receive (a FIFO drain deletes there, so
    /// the next message of its group can show).
    /// </summary>
    private async Task ReceiveAllAsync(string queueUrl, Func<Message, Task> each)
    {
        for (var empty = 0; empty < 2;)
        {
            var response = await Sqs.ReceiveMessageAsync(new ReceiveMessageRequest
            {
                QueueUrl = queueUrl, MaxNumberOfMessages = 10, WaitTimeSeconds = 0, VisibilityTimeout = 30,
                MessageAttributeNames = ["All"],
            });
            if (response.Messages is not { Count: > 0 })
            {
                empty++;
                continue;
            }

            foreach (var m in response.Messages)
            {
                await each(m);
            }
        }
    }

    /// <summary>The idempotency key a chaos message carries (empty when it has none).</summary>
    private static string KeyOf(Message m) =>
        m.MessageAttributes?.TryGetValue(SqsIdempotencyOptions.DefaultKeyAttributeName, out var a) == true ? a.StringValue : "";

    private async Task<int> InFlightAsync()
    {
        var attributes = await Sqs.GetQueueAttributesAsync(new GetQueueAttributesRequest { QueueUrl = _queueUrl, AttributeNames = ["ApproximateNumberOfMessagesNotVisible"] });
        return int.TryParse(attributes.Attributes?.GetValueOrDefault("ApproximateNumberOfMessagesNotVisible"), System.Globalization.CultureInfo.InvariantCulture, out var n) ? n : 0;
    }

    private async Task MakeVisibleAsync(string queueUrl, List<string> handles)
    {
        foreach (var chunk in handles.Chunk(10))
        {
            await Sqs.ChangeMessageVisibilityBatchAsync(new ChangeMessageVisibilityBatchRequest
            {
                QueueUrl = queueUrl,
                Entries = chunk.Select((h, i) => new ChangeMessageVisibilityBatchRequestEntry { Id = i.ToString(System.Globalization.CultureInfo.InvariantCulture), ReceiptHandle = h, VisibilityTimeout = 0 }).ToList(),
            });
        }
    }

    public override async ValueTask DisposeAsync()
    {
        if (_proxy is not null)
        {
            await _proxy.DisposeAsync();
        }

        if (_sqs is not null)
        {
            foreach (var url in new[] { _queueUrl, _dlqUrl }.Where(u => u.Length > 0))
            {
                try { await _sqs.DeleteQueueAsync(url); }
                catch (Exception e) { Console.Error.WriteLine("chaos: sqs cleanup failed: " + e.Message); }
            }

            _sqs.Dispose();
        }
    }

    public static async Task RunSqsChildAsync(ChildArgs args, IdempotentProcessor processor, Action ready, CancellationToken stop)
    {
        // The soak: the SDK's and the adapter's defaults; only the endpoint (the emulator) and the queues are set.
        var defaults = args.Get("defaults") is not null;
        using var sqs = defaults
            ? new AmazonSQSClient(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = args["sqs"], AuthenticationRegion = "us-east-1" })
            : Client(args["sqs"]);
        var options = defaults ? new SqsIdempotencyOptions { QueueUrl = args["queue"], DeadLetterQueueUrl = args["dlq"] } : new SqsIdempotencyOptions
        {
            QueueUrl = args["queue"],
            DeadLetterQueueUrl = args["dlq"],
            VisibilityTimeout = TimeSpan.FromSeconds(2),
            WaitTimeSeconds = 1,
            Concurrency = 2,
            MaxMessages = 10,
            ShutdownTimeout = TimeSpan.FromSeconds(5),
            ReceiveErrorDelay = TimeSpan.FromMilliseconds(300),
        };
        var worker = new IdempotentSqsWorker(sqs, processor, options);
        var run = worker.RunAsync(stop);
        ready();
        try
        {
            await run.ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (stop.IsCancellationRequested)
        {
        }
    }
}
