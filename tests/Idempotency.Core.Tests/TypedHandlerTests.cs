using System.Text;
using System.Text.Json.Serialization;
using Idempotency.InMemory;

namespace Idempotency.Core.Tests;

public sealed record Order(string Id, decimal Total);

[JsonSourceGenerationOptions(System.Text.Json.JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(Order))]
internal sealed partial class OrderJsonContext : JsonSerializerContext;

public sealed class TypedHandlerTests
{
    private readonly InMemoryIdempotencyStore _store = new();
    private readonly List<Order> _seen = [];

    private static IncomingMessage Json(string key, string json) => new(key, Encoding.UTF8.GetBytes(json));

    private IdempotentProcessor Processor(IIdempotentMessageHandler handler) =>
        new(_store, handler, new IdempotencyOptions { HandlerName = "orders" });

    [Fact]
    public async Task Typed_handler_gets_the_body_deserialized_with_web_defaults()
    {
        var processor = Processor(IdempotentHandler.Create<Order>((order, context, _) =>
        {
            Assert.Equal("k1", context.Key);
            _seen.Add(order);
            return ValueTask.CompletedTask;
        }));

        var result = await processor.ProcessAsync(Json("k1", """{"id":"o-1","total":12.5}"""), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, result.Outcome);
        Assert.Equal(new Order("o-1", 12.5m), Assert.Single(_seen));
    }

    [Fact]
    public async Task Source_generated_type_info_overload_deserializes()
    {
        var processor = Processor(IdempotentHandler.Create((order, _, _) =>
        {
            _seen.Add(order);
            return ValueTask.CompletedTask;
        }, OrderJsonContext.Default.Order));

        var result = await processor.ProcessAsync(Json("k1", """{"id":"o-2","total":3}"""), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, result.Outcome);
        Assert.Equal(new Order("o-2", 3m), Assert.Single(_seen));
    }

    [Theory]
    [InlineData("not json")]
    [InlineData("""{"id":"o-1","total":"twelve"}""")]
    [InlineData("null")]
    [InlineData("")]
    public async Task Body_that_does_not_deserialize_fails_with_MessageDeserializationException_and_commits_nothing(string body)
    {
        var ran = false;
        var processor = Processor(IdempotentHandler.Create<Order>((_, _, _) =>
        {
            ran = true;
            return ValueTask.CompletedTask;
        }));

        var result = await processor.ProcessAsync(Json("bad", body), TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Failed, result.Outcome);
        var exception = Assert.IsType<MessageDeserializationException>(result.Exception);
        Assert.False(exception.IsTransient);
        Assert.Equal(typeof(Order), exception.TargetType);
        Assert.Equal("bad", exception.Key);
        Assert.Equal("deserialization_failed", MessageDeserializationException.ReasonCode);
        Assert.False(ran);
        Assert.Null(_store.Find("orders", "bad"));
    }

    [Fact]
    public async Task Json_handler_class_deserializes_for_dependency_injection()
    {
        var handler = new OrderHandler();
        var processor = Processor(handler);

        await processor.ProcessAsync(Json("k1", """{"id":"o-3","total":1}"""), TestContext.Current.CancellationToken);
        var bad = await processor.ProcessAsync(Json("k2", "{"), TestContext.Current.CancellationToken);

        Assert.Equal(new Order("o-3", 1m), Assert.Single(handler.Seen));
        Assert.IsType<MessageDeserializationException>(bad.Exception);
    }

    [Fact]
    public async Task Batch_only_handler_serves_single_messages_and_batches()
    {
        var batches = new List<int>();
        var processor = Processor(IdempotentHandler.CreateBatch((batch, _) =>
        {
            batches.Add(batch.Messages.Count);
            Assert.All(batch.Messages, m => Assert.Same(batch.Transaction, m.Transaction));
            return ValueTask.CompletedTask;
        }));

        var single = await processor.ProcessAsync(Json("a", "1"), TestContext.Current.CancellationToken);
        var many = await processor.ProcessBatchAsync([Json("b", "2"), Json("c", "3"), Json("a", "1")], TestContext.Current.CancellationToken);

        Assert.Equal(ProcessingOutcome.Processed, single.Outcome);
        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Processed, ProcessingOutcome.Duplicate], many.Select(r => r.Outcome));
        Assert.Equal([1, 2], batches);
    }

    [Fact]
    public async Task Typed_batch_handler_gets_every_order_and_a_poison_body_is_isolated()
    {
        var batches = new List<string[]>();
        var processor = Processor(IdempotentHandler.CreateBatch((messages, batch, _) =>
        {
            Assert.All(messages, m => Assert.Same(batch.Transaction, m.Context.Transaction));
            batches.Add([.. messages.Select(m => m.Message.Id)]);
            return ValueTask.CompletedTask;
        }, OrderJsonContext.Default.Order));

        var results = await processor.ProcessBatchAsync(
            [Json("a", """{"id":"o-a","total":1}"""), Json("bad", "{oops"), Json("b", """{"id":"o-b","total":2}""")],
            TestContext.Current.CancellationToken);

        Assert.Equal([ProcessingOutcome.Processed, ProcessingOutcome.Failed, ProcessingOutcome.Processed], results.Select(r => r.Outcome));
        Assert.IsType<MessageDeserializationException>(results[1].Exception);
        Assert.Null(_store.Find("orders", "bad"));
        Assert.Equal(["o-a", "o-b"], batches.SelectMany(b => b).Order());
    }

    [Fact]
    public async Task Body_that_does_not_deserialize_is_dead_lettered_at_the_first_attempt_with_reason_deserialization_failed()
    {
        var options = new IdempotencyOptions { HandlerName = "orders" };
        var processor = new IdempotentProcessor(_store, IdempotentHandler.Create<Order>((_, _, _) => ValueTask.CompletedTask), options);
        var result = await processor.ProcessAsync(Json("bad", "not json"), TestContext.Current.CancellationToken);

        var decision = Idempotency.Delivery.DeliveryPolicy.Decide(result, attempt: 1, options);

        Assert.Equal(Idempotency.Delivery.DeliveryAction.DeadLetter, decision.Action);
        Assert.Equal(MessageDeserializationException.ReasonCode, decision.ReasonCode);
    }

    private sealed class OrderHandler() : JsonMessageHandler<Order>(OrderJsonContext.Default.Order)
    {
        public List<Order> Seen { get; } = [];

        protected override ValueTask HandleAsync(Order message, MessageContext context, CancellationToken cancellationToken)
        {
            Seen.Add(message);
            return ValueTask.CompletedTask;
        }
    }
}
