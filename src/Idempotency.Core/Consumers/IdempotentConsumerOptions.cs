using Idempotency.Delivery;

namespace Idempotency;

/// <summary>
/// The settings every idempotent consumer shares, under the same names for Kafka, RabbitMQ and SQS; each adapter's
/// options class derives from it and adds its broker's own.
/// </summary>
/// <remarks>Validated when the consumer starts (or at registration); every error names the setting.</remarks>
public abstract class IdempotentConsumerOptions
{
    /// <summary>The largest <see cref="Concurrency"/> accepted.</summary>
    public const int MaxConcurrency = 1024;

    /// <summary>The largest <see cref="BatchSize"/> accepted by the base validation (an adapter may lower it).</summary>
    public const int MaxBatchSize = 10_000;

    /// <summary>Gets or sets how many handler lanes run at once (Kafka: partitions processed concurrently; RabbitMQ: handler workers; SQS: pollers).</summary>
    /// <value>Defaults to the adapter's own default.</value>
    public int Concurrency { get; set; } = 1;

    /// <summary>
    /// Gets or sets the most ready messages of one lane that share one store transaction (natural batching: what is ready
    /// is taken, nothing waits unless <see cref="BatchMaxWait"/> is set). <c>1</c> turns batching off: one transaction per message.
    /// </summary>
    /// <value>Defaults to the adapter's own default.</value>
    public int BatchSize { get; set; } = 100;

    /// <summary>Gets or sets how long a lane lingers for a fuller batch once it has one message; zero (the default) never waits.</summary>
    /// <value>Defaults to <see cref="TimeSpan.Zero"/>.</value>
    public TimeSpan BatchMaxWait { get; set; } = TimeSpan.Zero;

    /// <summary>Gets or sets how long stopping waits for in-flight messages to settle before giving them back to the broker.</summary>
    /// <value>Defaults to 30 seconds.</value>
    public TimeSpan ShutdownTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Gets or sets how key bytes (binary headers) become a key: strict UTF-8 (invalid bytes make the key invalid), hex or base64.</summary>
    /// <value>Defaults to <see cref="KeyBytesEncoding.Utf8"/>.</value>
    public KeyBytesEncoding KeyBytesEncoding { get; set; } = KeyBytesEncoding.Utf8;

    /// <summary>Gets or sets how many failing messages the consumer remembers handler attempts for (oldest forgotten first).</summary>
    /// <value>Defaults to 10,000.</value>
    public int MaxTrackedMessages { get; set; } = 10_000;

    /// <summary>Gets the observers told about every settled message (in addition to any <see cref="IDeliveryObserver"/> registered in the container).</summary>
    public IList<IDeliveryObserver> Observers { get; } = new List<IDeliveryObserver>();

    /// <summary>Checks every option and throws with the names of the bad ones.</summary>
    /// <exception cref="ArgumentException">An option is invalid; the message names it.</exception>
    public void Validate()
    {
        var errors = GetValidationErrors();
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors));
        }
    }

    /// <summary>Returns one message per invalid option, each naming the option.</summary>
    /// <returns>An empty list when the options are valid.</returns>
    public IReadOnlyList<string> GetValidationErrors()
    {
        var errors = new List<string>();
        AddValidationErrors(errors);
        return errors;
    }

    /// <summary>Adds the errors of the shared options; an adapter overrides it to add its own (and calls the base).</summary>
    /// <param name="errors">The list to add to.</param>
    protected virtual void AddValidationErrors(IList<string> errors)
    {
        ArgumentNullException.ThrowIfNull(errors);
        if (Concurrency is < 1 or > MaxConcurrency)
        {
            errors.Add($"{nameof(Concurrency)} must be between 1 and {MaxConcurrency} (was {Concurrency}).");
        }

        if (BatchSize is < 1 or > MaxBatchSize)
        {
            errors.Add($"{nameof(BatchSize)} must be between 1 and {MaxBatchSize} (was {BatchSize}).");
        }

        if (BatchMaxWait < TimeSpan.Zero || BatchMaxWait > TimeSpan.FromSeconds(10))
        {
            errors.Add($"{nameof(BatchMaxWait)} must be between 0 and 10 seconds (was {BatchMaxWait}).");
        }

        if (ShutdownTimeout < TimeSpan.Zero || ShutdownTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"{nameof(ShutdownTimeout)} must be between 0 and 1 hour (was {ShutdownTimeout}).");
        }

        if (!Enum.IsDefined(KeyBytesEncoding))
        {
            errors.Add($"{nameof(KeyBytesEncoding)} must be one of {string.Join(", ", Enum.GetNames<KeyBytesEncoding>())} (was {(int)KeyBytesEncoding}).");
        }

        if (MaxTrackedMessages is < 1 or > 10_000_000)
        {
            errors.Add($"{nameof(MaxTrackedMessages)} must be between 1 and 10000000 (was {MaxTrackedMessages}).");
        }

        if (Observers.Any(o => o is null))
        {
            errors.Add($"{nameof(Observers)} must not contain null.");
        }
    }
}
