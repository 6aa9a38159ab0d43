using System.Text;
using BenchmarkDotNet.Attributes;
using Idempotency.Delivery;
using Idempotency.InMemory;

namespace Idempotency.Benchmarks.Micro;

/// <summary>Key validation, fingerprinting and the delivery decision: the per-message work outside the store.</summary>
[MemoryDiagnoser]
public class HotPathBenchmarks
{
    private readonly string _key = "orders-" + Guid.NewGuid().ToString("N");
    private readonly byte[] _payload1KiB = Encoding.UTF8.GetBytes(new string('x', 1024));
    private readonly IdempotencyOptions _options = new() { HandlerName = "bench" };
    private ProcessingResult _processed = null!;
    private ProcessingResult _failed = null!;

    [GlobalSetup]
    public void Setup()
    {
        // ProcessingResult has no public constructor: take real ones from the processor.
        var store = new InMemoryIdempotencyStore();
        var ok = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), _options);
        _processed = ok.ProcessAsync(new IncomingMessage("a", _payload1KiB)).AsTask().GetAwaiter().GetResult();
        var failing = new IdempotentProcessor(store, IdempotentHandler.Create((_, _) => throw new InvalidOperationException("boom")), _options);
        _failed = failing.ProcessAsync(new IncomingMessage("b", _payload1KiB)).AsTask().GetAwaiter().GetResult();
    }

    /// <summary>IdempotencyKey.GetValidationError on a 39-character key (the processor's first step).</summary>
    [Benchmark]
    public string? Key_validation() => IdempotencyKey.GetValidationError(_key, 512);

    /// <summary>SHA-256 payload fingerprint of 1 KiB.</summary>
    [Benchmark]
    public byte[] Fingerprint_SHA256_1KiB() => PayloadFingerprint.Compute(_payload1KiB);

    /// <summary>DeliveryPolicy.Decide for a committed result (acknowledge).</summary>
    [Benchmark]
    public DeliveryDecision Decide_processed() => DeliveryPolicy.Decide(_processed, 1, _options);

    /// <summary>DeliveryPolicy.Decide for a failed handler on attempt 2 (retry with backoff).</summary>
    [Benchmark]
    public DeliveryDecision Decide_failed() => DeliveryPolicy.Decide(_failed, 2, _options);
}

/// <summary>IdempotentProcessor overhead on the in-memory store with an empty handler: everything but the database.</summary>
[MemoryDiagnoser]
public class ProcessorBenchmarks
{
    private readonly byte[] _body = Encoding.UTF8.GetBytes("{\"id\":\"order-1\",\"amount\":5}");
    private IdempotentProcessor _processor = null!;
    private IdempotentProcessor _duplicates = null!;
    private IncomingMessage _seen = null!;
    private long _next;

    [GlobalSetup]
    public void Setup()
    {
        var options = new IdempotencyOptions { HandlerName = "bench" };
        _processor = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options);
        _duplicates = new IdempotentProcessor(new InMemoryIdempotencyStore(), IdempotentHandler.Create((_, _) => ValueTask.CompletedTask), options);
        _seen = new IncomingMessage("seen", _body) { Broker = "kafka", Destination = "orders" };
        _duplicates.ProcessAsync(_seen).AsTask().GetAwaiter().GetResult();
    }

    /// <summary>One new message: validate, fingerprint, claim, handler, commit (in memory), metrics.</summary>
    [Benchmark]
    public async Task<ProcessingResult> Process_new_message() =>
        await _processor.ProcessAsync(new IncomingMessage("k" + Interlocked.Increment(ref _next), _body) { Broker = "kafka", Destination = "orders" });

    /// <summary>One already-processed message (the replay path).</summary>
    [Benchmark]
    public async Task<ProcessingResult> Process_duplicate() => await _duplicates.ProcessAsync(_seen);

    /// <summary>A batch of 100 new messages in one store transaction (divide by 100 for per message).</summary>
    [Benchmark(OperationsPerInvoke = 100)]
    public async Task<IReadOnlyList<ProcessingResult>> Process_batch_of_100_per_message()
    {
        var batch = new IncomingMessage[100];
        var start = Interlocked.Add(ref _next, 100);
        for (var i = 0; i < batch.Length; i++)
        {
            batch[i] = new IncomingMessage("k" + (start - i), _body) { Broker = "kafka", Destination = "orders" };
        }

        return await _processor.ProcessBatchAsync(batch);
    }
}
