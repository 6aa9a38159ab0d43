using System.Reflection;
using System.Runtime.ExceptionServices;
using StackExchange.Redis;

namespace Idempotency.Redis;

/// <summary>
/// The handler's view of a store transaction's MULTI/EXEC: every call goes to the real transaction, and the task of
/// every command queued is kept, so the commit can see which of them Redis refused inside EXEC.
/// </summary>
/// <remarks>
/// Redis does not roll back an EXEC when one of its commands fails at run time (WRONGTYPE, say): the others, and the
/// completion record, are applied. Only the tasks the commands returned carry their errors, and handlers discard them,
/// so without this view such a failure would be a silent <c>Processed</c>. A proxy rather than a hand-written
/// decorator: <see cref="ITransaction"/> has hundreds of members, and every one must reach the real transaction.
/// </remarks>
#pragma warning disable CA1852 // DispatchProxy needs a type it can derive from.
internal class RecordingTransaction : DispatchProxy
#pragma warning restore CA1852
{
    private readonly List<Task> _commands = [];
    private ITransaction _inner = null!;

    /// <summary>Creates the handler's view of <paramref name="inner"/>.</summary>
    public static ITransaction Wrap(ITransaction inner)
    {
        var proxy = Create<ITransaction, RecordingTransaction>();
        ((RecordingTransaction)(object)proxy)._inner = inner;
        return proxy;
    }

    /// <summary>
    /// Waits for the commands queued through <paramref name="view"/> (after an EXEC that ran, they all complete) and
    /// returns the errors of those Redis refused, in the order they were queued.
    /// </summary>
    public static async Task<IReadOnlyList<Exception>> FailedCommandsAsync(ITransaction? view)
    {
        if (view is not RecordingTransaction recorder)
        {
            return [];
        }

        Task[] commands;
        lock (recorder._commands)
        {
            commands = [.. recorder._commands];
        }

        try
        {
            await Task.WhenAll(commands).ConfigureAwait(false);
            return [];
        }
#pragma warning disable CA1031 // The failures are collected from the tasks below, each with its own error.
        catch (Exception)
#pragma warning restore CA1031
        {
            return commands.Where(c => c.IsFaulted).Select(c => c.Exception!.InnerException ?? c.Exception).ToList();
        }
    }

    /// <inheritdoc/>
    protected override object? Invoke(MethodInfo? targetMethod, object?[]? args)
    {
        ArgumentNullException.ThrowIfNull(targetMethod);
        object? result;
        try
        {
            result = targetMethod.Invoke(_inner, args);
        }
        catch (TargetInvocationException exception) when (exception.InnerException is not null)
        {
            ExceptionDispatchInfo.Throw(exception.InnerException);
            throw;
        }

        if (result is Task task)
        {
            // Handlers of a batch may queue from several threads.
            lock (_commands)
            {
                _commands.Add(task);
            }
        }

        return result;
    }
}
