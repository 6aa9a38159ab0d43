using Amazon.Runtime;
using Amazon.SQS;
using Amazon.SQS.Model;
using Xunit;

namespace Idempotency.TestSupport;

/// <summary>
/// SQS for a test class: the fauxqs emulator at <c>IDEMPOTENCY_SQS</c> (a service URL), or real SQS with the default
/// AWS credentials and region when <c>IDEMPOTENCY_SQS_REAL=1</c>. There is no Docker fallback for fauxqs, so with
/// neither set the fixture fails with a message saying how to start the services. Queues get unique names and are
/// deleted at the end.
/// </summary>
public sealed class SqsFixture : IAsyncLifetime
{
    /// <summary>Set to <c>1</c> to run against real SQS (default credential chain and region) instead of the emulator.</summary>
    public const string RealVariable = "IDEMPOTENCY_SQS_REAL";

    private readonly List<string> _queues = [];
    private readonly List<IAmazonSQS> _clients = [];

    /// <summary>Gets the emulator's service URL, or null for real SQS.</summary>
    public string? ServiceUrl { get; private set; }

    /// <summary>Gets a value indicating whether the tests run against real SQS.</summary>
    public bool IsReal { get; private set; }

    /// <summary>Gets a client for setting up and inspecting queues.</summary>
    public IAmazonSQS Client { get; private set; } = null!;

    /// <inheritdoc/>
    public async ValueTask InitializeAsync()
    {
        IsReal = ServiceEnvironment.Get(RealVariable) == "1";
        if (!IsReal)
        {
            ServiceUrl = ServiceEnvironment.Get(ServiceEnvironment.SqsVariable) ?? throw new InvalidOperationException(
                $"{ServiceEnvironment.SqsVariable} is not set (and {RealVariable} is not 1), so there is no SQS to test against; " +
                "the fauxqs emulator has no Docker fallback. Start the local services with `scripts/services.sh up` and load their " +
                "variables with `eval \"$(scripts/services.sh env)\"`, or set IDEMPOTENCY_SQS_REAL=1 to use real SQS with your default AWS credentials.");
        }

        Client = CreateClient();
        try
        {
            await Client.ListQueuesAsync(new ListQueuesRequest { QueueNamePrefix = "idem-probe" });
        }
        catch (Exception exception) when (exception is AmazonServiceException or HttpRequestException or AmazonClientException)
        {
            throw new InvalidOperationException(
                $"SQS at {ServiceUrl ?? "AWS"} does not answer ({exception.GetType().Name}: {exception.Message}). " +
                "Start the local services with `scripts/services.sh up`.", exception);
        }
    }

    /// <summary>Creates a new client (each worker should have its own, like separate processes would).</summary>
    public IAmazonSQS CreateClient()
    {
        IAmazonSQS client = IsReal
            ? new AmazonSQSClient()
            : new AmazonSQSClient(new BasicAWSCredentials("test", "test"), new AmazonSQSConfig { ServiceURL = ServiceUrl, AuthenticationRegion = "us-east-1" });
        lock (_clients)
        {
            _clients.Add(client);
        }

        return client;
    }

    /// <summary>Creates a queue with a unique name and returns the URL SQS gave it (always use that URL).</summary>
    public async Task<string> CreateQueueAsync(string prefix, bool fifo = false, Dictionary<string, string>? attributes = null)
    {
        var name = $"{prefix}-{Guid.NewGuid():N}"[..Math.Min(prefix.Length + 13, 75)] + (fifo ? ".fifo" : string.Empty);
        var all = new Dictionary<string, string>(attributes ?? [], StringComparer.Ordinal);
        if (fifo)
        {
            all["FifoQueue"] = "true";
        }

        var response = await Client.CreateQueueAsync(new CreateQueueRequest { QueueName = name, Attributes = all });
        lock (_queues)
        {
            _queues.Add(response.QueueUrl);
        }

        return response.QueueUrl;
    }

    /// <summary>Creates a queue whose RedrivePolicy moves a message to a new dead-letter queue after <paramref name="maxReceiveCount"/> receives.</summary>
    public async Task<(string QueueUrl, string DeadLetterUrl)> CreateQueueWithRedriveAsync(string prefix, int maxReceiveCount, bool fifo = false)
    {
        var deadLetter = await CreateQueueAsync(prefix + "-dlq", fifo);
        var arn = (await Client.GetQueueAttributesAsync(new GetQueueAttributesRequest { QueueUrl = deadLetter, AttributeNames = ["QueueArn"] })).Attributes["QueueArn"];
        var queue = await CreateQueueAsync(prefix, fifo, new Dictionary<string, string>
        {
            ["RedrivePolicy"] = $"{{\"deadLetterTargetArn\":\"{arn}\",\"maxReceiveCount\":\"{maxReceiveCount}\"}}",
        });
        return (queue, deadLetter);
    }

    /// <summary>Sends one message with an optional <c>IdempotencyKey</c> attribute (and FIFO ids).</summary>
    public Task SendAsync(string queueUrl, string body, string? key, string? groupId = null, string? deduplicationId = null) =>
        Client.SendMessageAsync(new SendMessageRequest
        {
            QueueUrl = queueUrl,
            MessageBody = body,
            MessageAttributes = key is null ? null : new Dictionary<string, MessageAttributeValue> { ["IdempotencyKey"] = new() { DataType = "String", StringValue = key } },
            MessageGroupId = groupId,
            MessageDeduplicationId = deduplicationId,
        });

    /// <summary>Sends many (body, key) messages with SendMessageBatch, 10 at a time, several batches concurrently.</summary>
    public async Task SendManyAsync(string queueUrl, IReadOnlyList<(string Body, string? Key)> messages)
    {
        var batches = messages.Chunk(10).ToList();
        using var limit = new SemaphoreSlim(8);
        await Task.WhenAll(batches.Select(async batch =>
        {
            await limit.WaitAsync();
            try
            {
                var response = await Client.SendMessageBatchAsync(new SendMessageBatchRequest
                {
                    QueueUrl = queueUrl,
                    Entries = batch.Select((m, i) => new SendMessageBatchRequestEntry
                    {
                        Id = i.ToString(System.Globalization.CultureInfo.InvariantCulture),
                        MessageBody = m.Body,
                        MessageAttributes = m.Key is null ? null : new Dictionary<string, MessageAttributeValue> { ["IdempotencyKey"] = new() { DataType = "String", StringValue = m.Key } },
                    }).ToList(),
                });
                if (response.Failed is { Count: > 0 } failed)
                {
                    throw new InvalidOperationException($"SendMessageBatch failed for {failed.Count} entries: {failed[0].Code} {failed[0].Message}");
                }
            }
            finally
            {
                limit.Release();
            }
        }));
    }

    /// <summary>Reads ApproximateNumberOfMessages (visible) and ApproximateNumberOfMessagesNotVisible (in flight).</summary>
    public async Task<(int Visible, int NotVisible)> CountsAsync(string queueUrl)
    {
        var response = await Client.GetQueueAttributesAsync(new GetQueueAttributesRequest
        {
            QueueUrl = queueUrl,
            AttributeNames = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        });
        return (int.Parse(response.Attributes["ApproximateNumberOfMessages"]), int.Parse(response.Attributes["ApproximateNumberOfMessagesNotVisible"]));
    }

    /// <summary>Receives everything visible in a queue (for dead-letter queues), with all attributes, without deleting.</summary>
    public async Task<List<Message>> ReceiveAllAsync(string queueUrl, int expected, TimeSpan timeout)
    {
        var messages = new List<Message>();
        using var cts = new CancellationTokenSource(timeout);
        while (messages.Count < expected && !cts.IsCancellationRequested)
        {
            try
            {
                var response = await Client.ReceiveMessageAsync(new ReceiveMessageRequest
                {
                    QueueUrl = queueUrl,
                    MaxNumberOfMessages = 10,
                    WaitTimeSeconds = 1,
                    VisibilityTimeout = 60,
                    MessageAttributeNames = ["All"],
                    MessageSystemAttributeNames = ["All"],
                }, cts.Token);
                messages.AddRange(response.Messages ?? []);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }

        return messages;
    }

    /// <summary>Polls a condition until it holds or the timeout passes, then fails with <paramref name="what"/> and the last state.</summary>
    public static async Task WaitUntilAsync(Func<Task<bool>> condition, TimeSpan timeout, string what, Func<Task<string>>? describe = null)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            if (await condition())
            {
                return;
            }

            if (DateTime.UtcNow > deadline)
            {
                var state = describe is null ? string.Empty : " Last state: " + await describe();
                throw new TimeoutException($"Timed out after {timeout.TotalSeconds:0.#} s waiting for: {what}.{state}");
            }

            await Task.Delay(100);
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        foreach (var queue in _queues)
        {
            try
            {
                await Client.DeleteQueueAsync(queue);
            }
            catch (Exception exception) when (exception is AmazonServiceException or HttpRequestException)
            {
                // Best effort: the emulator forgets everything on restart anyway.
            }
        }

        foreach (var client in _clients)
        {
            client.Dispose();
        }
    }
}
