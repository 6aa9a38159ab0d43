// What a documentation snippet may use without declaring it: the variables and types an application around it
// would have. Keep this list short; a snippet that needs more declares it.
using Amazon.SQS;
using Confluent.Kafka;
using Idempotency;
using Idempotency.Storage;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;
using StackExchange.Redis;

namespace DocsAmbient;

/// <summary>A message type snippets deserialize.</summary>
public sealed record Order(string Id, string Account, decimal Amount);

/// <summary>A handler class snippets register.</summary>
public sealed class OrderHandler : IIdempotentMessageHandler
{
    public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}

/// <summary>Another handler class snippets register.</summary>
public sealed class PaymentHandler : IIdempotentMessageHandler
{
    public ValueTask HandleAsync(MessageContext context, CancellationToken cancellationToken) => ValueTask.CompletedTask;
}

/// <summary>The ambient variables, as static members a snippet's own locals may shadow. Never run, only compiled.</summary>
public abstract class AmbientVariables
{
    protected static HostApplicationBuilder builder = null!;
    protected static IServiceCollection services = null!;
    protected static IConfiguration configuration = null!;
    protected static IServiceProvider serviceProvider = null!;
    protected static NpgsqlDataSource dataSource = null!;
    protected static IConnectionMultiplexer redis = null!;
    protected static IAmazonSQS sqs = null!;
    protected static ConsumerConfig consumerConfig = null!;
    protected static ProducerConfig producerConfig = null!;
    protected static IIdempotencyStore store = null!;
    protected static IdempotentProcessor processor = null!;
    protected static ILogger logger = null!;
    protected static CancellationToken ct;
    protected static CancellationToken cancellationToken;
    protected static CancellationToken stoppingToken;
    protected static string key = null!;
    protected static byte[] body = null!;
    protected static string connectionString = null!;
    protected static string queueUrl = null!;
    protected static string dlqUrl = null!;
}
