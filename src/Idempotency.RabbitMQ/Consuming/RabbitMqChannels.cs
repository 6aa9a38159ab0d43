using RabbitMQ.Client;
using RabbitMQ.Client.Events;

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

    /// <summary>Checks that a queue exists with a passive declare on a throwaway channel (a 404 closes the channel it ran on).</summary>
    /// <returns><see langword="false"/> when it does not exist yet, the connection is down, or the check was cancelled: try again later.</returns>
    public static async Task<bool> QueueExistsAsync(IConnection connection, string queue, CancellationToken cancellationToken)
    {
        IChannel? probe = null;
        try
        {
            probe = await connection.CreateChannelAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
            await probe.QueueDeclarePassiveAsync(queue, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            return false;
        }
        finally
        {
            await CloseQuietlyAsync(probe).ConfigureAwait(false);
        }
    }

    /// <summary>Whether the broker closed a channel alone (an AMQP soft error), rather than the connection going away.</summary>
    public static bool IsChannelError(ShutdownEventArgs args) =>
        args.Initiator == ShutdownInitiator.Peer && args.ReplyCode is 311 or 312 or 313 or 403 or 404 or 405 or 406;
}
