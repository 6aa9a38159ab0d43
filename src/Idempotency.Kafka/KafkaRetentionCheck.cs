using System.Globalization;
using Confluent.Kafka;
using Confluent.Kafka.Admin;
using Microsoft.Extensions.Logging;

namespace Idempotency.Kafka;

/// <summary>Reads the topics' <c>retention.ms</c> and warns when the handler forgets keys sooner than Kafka can redeliver them.</summary>
internal static class KafkaRetentionCheck
{
    /// <summary>Describes the topics and logs a warning for each whose retention exceeds the handler's; never throws.</summary>
    /// <param name="config">Connection settings (bootstrap servers, security).</param>
    /// <param name="topics">The topics consumed.</param>
    /// <param name="options">The handler's options.</param>
    /// <param name="logger">Where the warning goes.</param>
    /// <param name="cancellationToken">Cancels the call.</param>
    /// <param name="store">The handler's store, whose own retention, if it has one, is the one compared.</param>
    /// <returns>How many topics drew a warning.</returns>
    public static async Task<int> WarnIfRetentionTooShortAsync(ClientConfig config, IEnumerable<string> topics, IdempotencyOptions options, ILogger logger, CancellationToken cancellationToken = default, Idempotency.Storage.IIdempotencyStore? store = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(topics);
        var warnings = 0;
        try
        {
            using var admin = new AdminClientBuilder(new AdminClientConfig(config)).Build();
            var resources = topics.Select(t => new ConfigResource { Type = ResourceType.Topic, Name = t }).ToList();
            var described = await admin.DescribeConfigsAsync(resources, new DescribeConfigsOptions { RequestTimeout = TimeSpan.FromSeconds(10) }).ConfigureAwait(false);
            cancellationToken.ThrowIfCancellationRequested();
            warnings = WarnIfTooShort(described, options, logger, store);
        }
        catch (KafkaException)
        {
            // Describing configs needs ACLs some clusters deny; the check is advice, never a reason not to start.
        }

        return warnings;
    }

    /// <summary>Logs a warning for each described topic whose <c>retention.ms</c> exceeds the handler's retention.</summary>
    /// <param name="described">The topics' configurations.</param>
    /// <param name="options">The handler's options.</param>
    /// <param name="logger">Where the warnings go.</param>
    /// <param name="store">The handler's store, whose own retention, if it has one, is the one compared.</param>
    /// <returns>How many topics drew a warning (infinite retention, <c>-1</c>, draws none: nothing to compare with).</returns>
    internal static int WarnIfTooShort(IEnumerable<DescribeConfigsResult> described, IdempotencyOptions options, ILogger logger, Idempotency.Storage.IIdempotencyStore? store = null)
    {
        var warnings = 0;
        foreach (var topic in described)
        {
            if (topic.Entries.TryGetValue("retention.ms", out var entry)
                && long.TryParse(entry.Value, NumberStyles.Integer, CultureInfo.InvariantCulture, out var ms) && ms > 0
                && RetentionGuard.WarnIfTooShort(logger, options, TimeSpan.FromMilliseconds(ms), $"topic {topic.ConfigResource.Name} retention.ms={ms}", store))
            {
                warnings++;
            }
        }

        return warnings;
    }
}
