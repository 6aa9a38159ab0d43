using Amazon.Runtime;
using Amazon.SQS;
using Amazon.SQS.Model;
using Idempotency.Sqs;

namespace Idempotency.Demo.Scenarios;

/// <summary>
/// SQS on the fauxqs emulator (IDEMPOTENCY_SQS), 2 s visibility timeout. A crash cuts the worker's SQS client (disposed
/// under it) and stops it: nothing more is deleted or released, so every message it had received, committed or not,
/// becomes visible again when its visibility timeout expires, and the next worker receives it again.
/// </summary>
internal sealed class SqsScenario(string serviceUrl) : BrokerScenario
{
    private static readonly TimeSpan Visibility = TimeSpan.FromSeconds(2);
    private string? _queueUrl;

    public override string Broker => "sqs";

    private AmazonSQSClient NewClient() =>
        new(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = serviceUrl, AuthenticationRegion = "us-east-1" });

    protected override async Task ProduceAsync(string name, Workload workload, CancellationToken cancellationToken)
    {
        using var sqs = NewClient();
        // fauxqs looks queues up by the exact URL string: always use the one CreateQueue returned.
        _queueUrl = (await sqs.CreateQueueAsync(new CreateQueueRequest { QueueName = name }, cancellationToken)).QueueUrl;
        var batches = workload.Messages.Chunk(10).Select((chunk, b) => new SendMessageBatchRequest
        {
            QueueUrl = _queueUrl,
            Entries = chunk.Select((m, i) => new SendMessageBatchRequestEntry
            {
                Id = $"{b}-{i}",
                MessageBody = System.Text.Encoding.UTF8.GetString(m.Body),
                // The adapter's default key source: the IdempotencyKey attribute. A re-send gets a new MessageId.
                MessageAttributes = new Dictionary<string, MessageAttributeValue>
                {
                    [SqsIdempotencyOptions.DefaultKeyAttributeName] = new() { DataType = "String", StringValue = m.Key },
                },
            }).ToList(),
        }).ToList();
        foreach (var wave in batches.Chunk(8))
        {
            var responses = await Task.WhenAll(wave.Select(r => sqs.SendMessageBatchAsync(r, cancellationToken)));
            var failed = responses.Sum(r => r.Failed?.Count ?? 0);
            if (failed > 0)
            {
                throw new InvalidOperationException($"{failed} SQS sends failed.");
            }
        }
    }

    protected override Task<IConsumerRun> StartConsumerAsync(string name, IdempotentProcessor processor, CancellationToken cancellationToken)
    {
        var sqs = NewClient();
        var worker = new IdempotentSqsWorker(sqs, processor, new SqsIdempotencyOptions
        {
            QueueUrl = _queueUrl!,
            WaitTimeSeconds = 1,
            Concurrency = 3,
            VisibilityTimeout = Visibility,
            ShutdownTimeout = TimeSpan.FromSeconds(2),
        });
        var stop = new CancellationTokenSource();
        var running = Task.Run(() => worker.RunAsync(stop.Token), CancellationToken.None);
        return Task.FromResult<IConsumerRun>(new Run(sqs, stop, running));
    }

    protected override async Task<bool> IsDrainedAsync(string name, CancellationToken cancellationToken)
    {
        using var sqs = NewClient();
        var attributes = await sqs.GetQueueAttributesAsync(new GetQueueAttributesRequest
        {
            QueueUrl = _queueUrl,
            AttributeNames = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        }, cancellationToken);
        return attributes.ApproximateNumberOfMessages == 0 && attributes.ApproximateNumberOfMessagesNotVisible == 0;
    }

    protected override async Task CleanupAsync(string name)
    {
        using var sqs = NewClient();
        await sqs.DeleteQueueAsync(_queueUrl);
    }

    private sealed class Run(AmazonSQSClient sqs, CancellationTokenSource stop, Task running) : IConsumerRun
    {
        public async Task CrashAsync()
        {
            // The process is gone: its client can neither delete nor release what it received.
            sqs.Dispose();
            await StopAsync();
        }

        public async Task StopAsync()
        {
            await stop.CancelAsync();
            try
            {
                await running;
            }
            catch (Exception)
            {
                // A crashed worker may end with an error; what it deleted is what counts.
            }
        }

        public ValueTask DisposeAsync()
        {
            sqs.Dispose();
            stop.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
