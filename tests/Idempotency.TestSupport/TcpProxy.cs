using System.Net;
using System.Net.Sockets;

namespace Idempotency.TestSupport;

/// <summary>
/// A loopback TCP forwarder for outage tests: point a client at <see cref="Port"/>, then <see cref="Stop"/> cuts every
/// connection and refuses new ones (the service looks down) and <see cref="Start"/> brings it back on the same port.
/// The real service is never touched, so other suites using it are unaffected.
/// </summary>
public sealed class TcpProxy : IAsyncDisposable
{
    private readonly IPEndPoint _target;
    private readonly object _gate = new();
    private readonly List<TcpClient> _connections = [];
    private TcpListener? _listener;
    private CancellationTokenSource? _running;

    /// <summary>Creates a proxy to the target and starts it on a free loopback port.</summary>
    public TcpProxy(string targetHost, int targetPort)
    {
        var address = targetHost is "localhost" ? IPAddress.Loopback : IPAddress.Parse(targetHost);
        _target = new IPEndPoint(address, targetPort);
        var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        Port = ((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        Start();
    }

    /// <summary>Gets the loopback port clients connect to.</summary>
    public int Port { get; }

    /// <summary>Gets a value indicating whether the proxy accepts connections.</summary>
    public bool IsRunning { get; private set; }

    /// <summary>Gets how many connections were accepted in all.</summary>
    public int AcceptedConnections { get; private set; }

    /// <summary>Accepts and forwards connections again.</summary>
    public void Start()
    {
        lock (_gate)
        {
            if (IsRunning)
            {
                return;
            }

            var listener = new TcpListener(IPAddress.Loopback, Port);
            listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            listener.Start();
            _listener = listener;
            _running = new CancellationTokenSource();
            IsRunning = true;
            _ = AcceptLoopAsync(listener, _running.Token);
        }
    }

    /// <summary>Resets every open connection and refuses new ones until <see cref="Start"/>.</summary>
    public void Stop()
    {
        lock (_gate)
        {
            if (!IsRunning)
            {
                return;
            }

            IsRunning = false;
            _running!.Cancel();
            _listener!.Stop();
            foreach (var connection in _connections)
            {
                try
                {
                    // Linger 0 sends RST: the client sees the connection break at once, as when a server dies.
                    connection.Client.LingerState = new LingerOption(true, 0);
                    connection.Close();
                }
                catch (ObjectDisposedException)
                {
                }
            }

            _connections.Clear();
        }
    }

    private async Task AcceptLoopAsync(TcpListener listener, CancellationToken stopping)
    {
        while (!stopping.IsCancellationRequested)
        {
            TcpClient client;
            try
            {
                client = await listener.AcceptTcpClientAsync(stopping);
            }
            catch (Exception) when (stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }

            _ = ForwardAsync(client, stopping);
        }
    }

    private async Task ForwardAsync(TcpClient client, CancellationToken stopping)
    {
        var upstream = new TcpClient { NoDelay = true };
        client.NoDelay = true;
        lock (_gate)
        {
            if (!IsRunning)
            {
                client.Close();
                return;
            }

            AcceptedConnections++;
            _connections.Add(client);
            _connections.Add(upstream);
        }

        try
        {
            await upstream.ConnectAsync(_target, stopping);
            var a = client.GetStream();
            var b = upstream.GetStream();
            await Task.WhenAny(a.CopyToAsync(b, stopping), b.CopyToAsync(a, stopping));
        }
        catch (Exception)
        {
            // A cut connection ends either copy; closing both ends below is all that is left to do.
        }
        finally
        {
            lock (_gate)
            {
                _connections.Remove(client);
                _connections.Remove(upstream);
            }

            client.Close();
            upstream.Close();
        }
    }

    /// <inheritdoc/>
    public ValueTask DisposeAsync()
    {
        Stop();
        return ValueTask.CompletedTask;
    }
}
