using System.Net.Sockets;

namespace Idempotency.TestSupport;

/// <summary>Finds the real services the integration tests run against.</summary>
public static class ServiceEnvironment
{
    /// <summary>The variable with the PostgreSQL connection string.</summary>
    public const string PostgresVariable = "IDEMPOTENCY_POSTGRES";

    /// <summary>The variable with the Redis endpoint.</summary>
    public const string RedisVariable = "IDEMPOTENCY_REDIS";

    /// <summary>The variable with the RabbitMQ URI.</summary>
    public const string RabbitMqVariable = "IDEMPOTENCY_RABBITMQ";

    /// <summary>The variable with the SQS service URL.</summary>
    public const string SqsVariable = "IDEMPOTENCY_SQS";

    /// <summary>Reads a variable, or returns null when it is unset or empty.</summary>
    public static string? Get(string variable) =>
        Environment.GetEnvironmentVariable(variable) is { Length: > 0 } value ? value : null;

    /// <summary>The failure a fixture raises when neither the variable nor a Docker engine is there.</summary>
    public static InvalidOperationException Missing(string variable, string service) => new(
        $"{variable} is not set and no Docker engine answers, so there is no {service} to test against. " +
        "Start the local services with `scripts/services.sh up` and load their variables with " +
        "`eval \"$(scripts/services.sh env)\"` (or run `./build.sh test`, which does both). See docs/running-tests.md.");

    /// <summary>Whether a Docker engine answers on its socket (DOCKER_HOST or /var/run/docker.sock).</summary>
    public static bool DockerAnswers()
    {
        var host = Environment.GetEnvironmentVariable("DOCKER_HOST");
        var path = host is { Length: > 0 } && host.StartsWith("unix://", StringComparison.Ordinal) ? host["unix://".Length..] : "/var/run/docker.sock";
        if (host is { Length: > 0 } && !host.StartsWith("unix://", StringComparison.Ordinal))
        {
            return true; // A TCP engine: let Testcontainers try it.
        }

        if (!File.Exists(path))
        {
            return false;
        }

        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            socket.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
