using Microsoft.Extensions.Logging;

namespace Idempotency.RabbitMQ;

/// <summary>Source-generated log messages of the RabbitMQ adapter (event ids 3000-3999). Payloads are never logged.</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 3000, Level = LogLevel.Information, Message = "Consuming queue {Queue} for handler {Handler} (prefetch {Prefetch}, concurrency {Concurrency}, batch size {BatchSize})")]
    public static partial void Started(ILogger logger, string queue, string handler, int prefetch, int concurrency, int batchSize);

    [LoggerMessage(EventId = 3001, Level = LogLevel.Information, Message = "Stopping consumer of queue {Queue}; {InFlight} deliveries in flight")]
    public static partial void Stopping(ILogger logger, string queue, int inFlight);

    [LoggerMessage(EventId = 3002, Level = LogLevel.Warning, Message = "Acknowledging delivery {DeliveryTag} on queue {Queue} failed after its commit; the broker will redeliver it and the redelivery will be a duplicate")]
    public static partial void AckFailed(ILogger logger, Exception exception, ulong deliveryTag, string queue);

    [LoggerMessage(EventId = 3003, Level = LogLevel.Warning, Message = "Message with key {Key} on queue {Queue} dead-lettered ({ReasonCode}) after {Attempts} attempts")]
    public static partial void DeadLettered(ILogger logger, string key, string queue, string reasonCode, int attempts);

    [LoggerMessage(EventId = 3004, Level = LogLevel.Warning, Message = "Store unavailable: pausing consumption of queue {Queue} until it answers")]
    public static partial void Paused(ILogger logger, string queue);

    [LoggerMessage(EventId = 3005, Level = LogLevel.Information, Message = "Store answers again: resuming consumption of queue {Queue} after {Probes} probes")]
    public static partial void Resumed(ILogger logger, string queue, int probes);

    [LoggerMessage(EventId = 3006, Level = LogLevel.Warning, Message = "Republishing a dead-letter from queue {Queue} to exchange '{Exchange}' failed; the delivery is returned to the queue and dead-lettered later")]
    public static partial void DeadLetterPublishFailed(ILogger logger, Exception exception, string queue, string exchange);

    [LoggerMessage(EventId = 3007, Level = LogLevel.Warning, Message = "Settling delivery {DeliveryTag} on queue {Queue} failed; the broker requeues it when the channel closes")]
    public static partial void SettleFailed(ILogger logger, Exception exception, ulong deliveryTag, string queue);

    [LoggerMessage(EventId = 3009, Level = LogLevel.Error, Message = "Consumer of queue {Queue} failed unexpectedly")]
    public static partial void WorkerFailed(ILogger logger, Exception exception, string queue);

    [LoggerMessage(EventId = 3010, Level = LogLevel.Warning, Message = "Resuming consumption of queue {Queue} failed; trying again")]
    public static partial void ResumeFailed(ILogger logger, Exception exception, string queue);

    [LoggerMessage(EventId = 3011, Level = LogLevel.Warning, Message = "Dead-lettering without reason headers from queue {Queue}: no DeadLetterExchange is configured, so the broker dead-letters through the queue's x-dead-letter-exchange")]
    public static partial void NackDeadLetter(ILogger logger, string queue);

    [LoggerMessage(EventId = 3012, Level = LogLevel.Warning, Message = "Channel consuming queue {Queue} shut down ({Initiator} {ReplyCode} {ReplyText}); unacknowledged deliveries return to the queue")]
    public static partial void ChannelShutdown(ILogger logger, string queue, string initiator, ushort replyCode, string replyText);

    [LoggerMessage(EventId = 3013, Level = LogLevel.Information, Message = "Dead-letter channel of queue {Queue} was closed ({ReplyCode} {ReplyText}); opened a new one")]
    public static partial void DeadLetterChannelReopened(ILogger logger, string queue, ushort replyCode, string replyText);

    [LoggerMessage(EventId = 3014, Level = LogLevel.Warning, Message = "Ignoring an x-delivery-count header that is not a non-negative integer ({ValueType}) on queue {Queue}; attempts of such deliveries are counted in this process (logged once)")]
    public static partial void DeliveryCountIgnored(ILogger logger, string queue, string valueType);

    [LoggerMessage(EventId = 3015, Level = LogLevel.Error, Message = "Taking delivery {DeliveryTag} from queue {Queue} failed; it is returned to the queue and the consumer stops")]
    public static partial void DeliveryCallbackFailed(ILogger logger, Exception exception, ulong deliveryTag, string queue);

    [LoggerMessage(EventId = 3016, Level = LogLevel.Error, Message = "The broker closed the channel consuming queue {Queue} ({ReplyCode} {ReplyText}); such a channel is not recovered, so the consumer stops and its Completion faults")]
    public static partial void ChannelClosedByBroker(ILogger logger, string queue, ushort replyCode, string replyText);

    [LoggerMessage(EventId = 3017, Level = LogLevel.Warning, Message = "The broker cancelled the subscription to queue {Queue} (consumer tag {ConsumerTag}; deleted queue?); subscribing again once it exists: {WillResubscribe}")]
    public static partial void CancelledByBroker(ILogger logger, string queue, string consumerTag, bool willResubscribe);

    [LoggerMessage(EventId = 3018, Level = LogLevel.Information, Message = "Queue {Queue} exists again: consuming it again after {Probes} checks")]
    public static partial void Resubscribed(ILogger logger, string queue, int probes);
}
