using RabbitMQ.Client;

namespace Idempotency.RabbitMQ.Consuming;

/// <summary>Opens and closes the channels a consumer (or a step) owns.</summary>
internal static class RabbitMqChannels
{
    /// <summary>Opens a consuming channel and a dead-letter channel with publisher confirmations (and their tracking).</summary>
    public static async Task<(IChannel Channel, IChannel DeadLetterChannel)> OpenAsync(IConnection connection, CancellationToken cancellationToken)
    {
        var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
        try
        {
            return (channel, await OpenConfirmingAsync(connection, cancellationToken).ConfigureAwait(false));
        }
        catch
        {
            await channel.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Opens a channel whose publishes return once the broker confirmed them (and throw when it did not).</summary>
    public static Task<IChannel> OpenConfirmingAsync(IConnection connection, CancellationToken cancellationToken) =>
        connection.CreateChannelAsync(new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true), cancellationToken);

    /// <summary>
    /// Returns how to replace a dead-letter channel a channel error closed: a new confirming channel, while the connection
    /// is up (during a connection loss automatic recovery reopens the channel itself, so nothing is opened then).
    /// </summary>
    public static Func<CancellationToken, Task<IChannel>> ConfirmingReopener(IConnection connection) =>
        cancellationToken => connection.IsOpen
            ? OpenConfirmingAsync(connection, cancellationToken)
            : throw new InvalidOperationException("The connection is down; automatic recovery reopens the dead-letter channel.");

    /// <summary>Closes a channel, ignoring a connection that is already gone.</summary>
    public static async Task CloseQuietlyAsync(IChannel? channel)
    {
        if (channel is null)
        {
            return;
        }

        try
        {
            if (channel.IsOpen)
            {
                await channel.CloseAsync().ConfigureAwait(false);
            }

            await channel.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            // Closing a channel whose connection is gone: nothing left to release.
        }
    }
}
