using Amazon.Runtime;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency;
using Idempotency.Sqs;
using Npgsql;

/// <summary>SQS: one standard queue on the emulator (fauxqs), IdempotentSqsWorker with its default options in every process.</summary>
internal sealed class SqsUnderTest(string serviceUrl, int unique, AmazonSQSClient sqs) : IBrokerUnderTest
{
    private readonly Dictionary<string, string> _queueUrls = [];

    public string Name => "SQS";

    public int Unique => unique;

    public string Setup => $"one standard queue on fauxqs ({serviceUrl}), key in the IdempotencyKey attribute; each process an IdempotentSqsWorker with default options (Pollers 2, MaxMessages 10, WaitTimeSeconds 20, BatchProcessing: one transaction per received batch, per-message handler)";

    public string CpuSource => "fauxqs (node launcher.mjs), shared with other users of the emulator";

    public static SqsUnderTest Create(string serviceUrl, int unique) => new(serviceUrl, unique, Client(serviceUrl));

    /// <summary>A consumer process: builds its worker, says ready, polls from go until stop.</summary>
    public static async Task<int> RunConsumerAsync(NpgsqlDataSource dataSource, string schema, string serviceUrl, string queueUrl)
    {
        using var sqs = Client(serviceUrl);
        var worker = new IdempotentSqsWorker(sqs, Workload.CreateProcessor(dataSource, schema), new SqsIdempotencyOptions { QueueUrl = queueUrl });
        Console.WriteLine("ready");
        if (Console.ReadLine() != "go")
        {
            return 1;
        }

        using var stop = new CancellationTokenSource();
        var run = worker.RunAsync(stop.Token);
        _ = Console.ReadLine(); // "stop"
        await stop.CancelAsync();
        await run;
        return 0;
    }

    public async Task PrepareAsync(string runId, IReadOnlyList<string> sends)
    {
        var url = (await sqs.CreateQueueAsync(new CreateQueueRequest { QueueName = "scale-" + runId })).QueueUrl;
        _queueUrls[runId] = url;
        using var limit = new SemaphoreSlim(8);
        await Task.WhenAll(sends.Chunk(10).Select(async chunk =>
        {
            await limit.WaitAsync();
            try
            {
                var response = await sqs.SendMessageBatchAsync(new SendMessageBatchRequest
                {
                    QueueUrl = url,
                    Entries = [.. chunk.Select((key, i) => new SendMessageBatchRequestEntry
                    {
                        Id = i.ToString(System.Globalization.CultureInfo.InvariantCulture),
                        MessageBody = Workload.Body,
                        MessageAttributes = new() { [SqsIdempotencyOptions.DefaultKeyAttributeName] = new MessageAttributeValue { DataType = "String", StringValue = key } },
                    })],
                });
                if (response.Failed is { Count: > 0 })
                {
                    throw new InvalidOperationException($"SendMessageBatch refused {response.Failed.Count} entries: {response.Failed[0].Message}");
                }
            }
            finally
            {
                limit.Release();
            }
        }));
    }

    public IEnumerable<string> ConsumerArguments(string runId) => ["--sqs", serviceUrl, "--queue", _queueUrls[runId]];

    public async Task WaitForConsumersAsync(IReadOnlyList<ChildProcess> consumers)
    {
        foreach (var consumer in consumers)
        {
            await consumer.ReadUntilAsync("ready", TimeSpan.FromMinutes(2));
        }
    }

    public async Task StartAsync(string runId, IReadOnlyList<ChildProcess> consumers)
    {
        foreach (var consumer in consumers)
        {
            await consumer.SendAsync("go");
        }
    }

    public async Task<long> PendingAsync(string runId)
    {
        var attributes = await sqs.GetQueueAttributesAsync(new GetQueueAttributesRequest
        {
            QueueUrl = _queueUrls[runId],
            AttributeNames = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        });
        return attributes.ApproximateNumberOfMessages + attributes.ApproximateNumberOfMessagesNotVisible;
    }

    public double CpuSeconds() => ProcCpu.OfCommandLine("launcher.mjs");

    public async Task CleanupAsync(string runId) => await sqs.DeleteQueueAsync(_queueUrls[runId]);

    public ValueTask DisposeAsync()
    {
        sqs.Dispose();
        return ValueTask.CompletedTask;
    }

    private static AmazonSQSClient Client(string serviceUrl) =>
        new(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = serviceUrl, AuthenticationRegion = "us-east-1" });
}
