using System.Text;

namespace Idempotency.Core.Tests;

internal static class TestMessages
{
    public static IncomingMessage Create(string? key, string body = "payload", string destination = "orders") =>
        new(key, Encoding.UTF8.GetBytes(body)) { Destination = destination, Broker = "test" };

    public static IdempotencyOptions Options(string handler = "h", PayloadMismatchPolicy policy = PayloadMismatchPolicy.TreatAsDuplicate) =>
        new() { HandlerName = handler, PayloadMismatchPolicy = policy };
}
