namespace Idempotency.Postgres;

/// <summary>Options of the PostgreSQL store.</summary>
public sealed class PostgresIdempotencyStoreOptions
{
    /// <summary>Gets or sets the connection string, when no <c>NpgsqlDataSource</c> is given.</summary>
    public string? ConnectionString { get; set; }

    /// <summary>Gets or sets the schema of the store's tables.</summary>
    /// <value>Defaults to <c>idempotency</c>; a plain SQL identifier (letters, digits, <c>_</c>).</value>
    public string Schema { get; set; } = "idempotency";

    /// <summary>Gets or sets the table of processed keys.</summary>
    /// <value>Defaults to <c>processed_messages</c>; a plain SQL identifier.</value>
    public string Table { get; set; } = "processed_messages";

    /// <summary>Gets or sets the outbox table.</summary>
    /// <value>Defaults to <c>outbox</c>; a plain SQL identifier.</value>
    public string OutboxTable { get; set; } = "outbox";

    /// <summary>Gets or sets the table of consumer positions (offsets kept in the store, see <c>IConsumerPositionStore</c>).</summary>
    /// <value>Defaults to <c>consumer_positions</c>; a plain SQL identifier. Written only for messages that carry a position.</value>
    public string ConsumerPositionsTable { get; set; } = "consumer_positions";

    /// <summary>
    /// Gets or sets a value indicating whether the store prepares its own statements (the claim, the key insert, the
    /// look-ups and the commit batch) on each physical connection, once. Parsing and planning them on every message cost
    /// the server more than running them. Set to <see langword="false"/> behind a pooler that cannot keep prepared
    /// statements (PgBouncer before 1.21 in transaction mode).
    /// </summary>
    /// <value>Defaults to <see langword="true"/>.</value>
    public bool PrepareStatements { get; set; } = true;

    /// <summary>Returns one message per invalid option, each naming the option.</summary>
    /// <param name="requireConnectionString">Whether <see cref="ConnectionString"/> must be set.</param>
    /// <returns>An empty list when valid.</returns>
    public IReadOnlyList<string> GetValidationErrors(bool requireConnectionString)
    {
        var errors = new List<string>();
        if (requireConnectionString && string.IsNullOrWhiteSpace(ConnectionString))
        {
            errors.Add($"{nameof(ConnectionString)} is required.");
        }

        Check(Schema, nameof(Schema));
        Check(Table, nameof(Table));
        Check(OutboxTable, nameof(OutboxTable));
        Check(ConsumerPositionsTable, nameof(ConsumerPositionsTable));
        return errors;

        void Check(string value, string name)
        {
            // Names are spliced into SQL, so anything but a plain identifier is refused outright.
            if (!IdentifierRules.IsValidSqlIdentifier(value))
            {
                errors.Add($"{name} must be a plain SQL identifier (a letter or '_' then letters, digits or '_', at most 63 characters); was '{value}'.");
            }
        }
    }

    /// <summary>Throws when an option is invalid.</summary>
    /// <param name="requireConnectionString">Whether <see cref="ConnectionString"/> must be set.</param>
    /// <exception cref="ArgumentException">An option is invalid; the message names it.</exception>
    public void Validate(bool requireConnectionString)
    {
        var errors = GetValidationErrors(requireConnectionString);
        if (errors.Count > 0)
        {
            throw new ArgumentException(string.Join(" ", errors));
        }
    }
}
