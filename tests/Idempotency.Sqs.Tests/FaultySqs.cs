using System.Reflection;
using Amazon.SQS;

namespace Idempotency.Sqs.Tests;

/// <summary>
/// An <see cref="IAmazonSQS"/> that forwards to a real client except where a test intercepts a call
/// (fail heartbeats, refuse some deletes, ...). Built with <see cref="DispatchProxy"/>.
/// </summary>
public class FaultySqs : DispatchProxy
{
    /// <summary>Gets the client calls go to.</summary>
    public IAmazonSQS Inner { get; private set; } = null!;

    /// <summary>Gets or sets an interceptor: return non-null to answer the call instead of the inner client.</summary>
    public Func<string, object?[], object?>? Intercept { get; set; }

    public IAmazonSQS Client => (IAmazonSQS)(object)this;

    public static FaultySqs Wrap(IAmazonSQS inner)
    {
        var proxy = (FaultySqs)(object)Create<IAmazonSQS, FaultySqs>();
        proxy.Inner = inner;
        return proxy;
    }

    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        args ??= [];
        if (Intercept?.Invoke(targetMethod.Name, args) is { } answer)
        {
            return answer;
        }

        try
        {
            return targetMethod.Invoke(Inner, args);
        }
        catch (TargetInvocationException exception) when (exception.InnerException is not null)
        {
            throw exception.InnerException;
        }
    }
}

/// <summary>A client that fails every call: for unit tests that never reach SQS.</summary>
public sealed class ThrowingSqs
{
    public IAmazonSQS Client { get; } = CreateClient();

    private static IAmazonSQS CreateClient()
    {
        var proxy = (FaultySqs)(object)DispatchProxy.Create<IAmazonSQS, FaultySqs>();
        proxy.Intercept = (name, _) => throw new InvalidOperationException($"No SQS in unit tests ({name}).");
        return proxy.Client;
    }
}
