using Idempotency.Storage;

namespace Idempotency.Processing;

/// <summary>
/// How a single message's key is claimed around its handler (<see cref="ClaimTiming"/>). What both ways share lives
/// here: a lease lost at commit, an error of the store's own work, and the transaction's disposal.
/// </summary>
/// <param name="steps">The shared steps.</param>
internal abstract class ClaimStrategy(ProcessingSteps steps)
{
    /// <summary>Gets the shared steps.</summary>
    protected ProcessingSteps Steps => steps;

    /// <summary>Processes one message with a valid key in its own store transaction.</summary>
    /// <param name="message">The message.</param>
    /// <param name="claim">Its claim.</param>
    /// <param name="storePosition">Whether its consumer position may be recorded: not inside a batch once an earlier message is unsettled.</param>
    /// <param name="cancellationToken">Cancels processing; a cancelled message is rolled back.</param>
    /// <returns>The outcome.</returns>
    public async ValueTask<ProcessingResult> ProcessAsync(IncomingMessage message, ClaimRequest claim, bool storePosition, CancellationToken cancellationToken)
    {
        var attempt = new Attempt();
        try
        {
            return await RunAsync(message, claim, storePosition, attempt, cancellationToken).ConfigureAwait(false);
        }
        catch (ClaimLostException)
        {
            return steps.Results.LeaseLost(message, claim);
        }
        catch (Exception exception) when (!ProcessingSteps.IsCancellation(exception, cancellationToken))
        {
            // The store's own work failed (look-up, begin, claim, commit): never the message's fault, unless the store
            // says it refused the handler's writes at commit.
            if (attempt.Transaction is not null)
            {
                await ProcessingSteps.RollbackQuietlyAsync(attempt.Transaction).ConfigureAwait(false);
            }

            return steps.Results.StoreWorkFailed(message, claim, exception, attempt.HandlerRan);
        }
        finally
        {
            if (attempt.Transaction is not null)
            {
                await attempt.Transaction.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>Claims, runs the handler and commits; an exception it lets out is the store's (or a lost lease).</summary>
    /// <param name="message">The message.</param>
    /// <param name="claim">Its claim.</param>
    /// <param name="storePosition">Whether its consumer position may be recorded.</param>
    /// <param name="attempt">Where the open transaction and whether the handler ran are kept, for the failure paths.</param>
    /// <param name="cancellationToken">Cancels processing.</param>
    /// <returns>The outcome.</returns>
    protected abstract ValueTask<ProcessingResult> RunAsync(IncomingMessage message, ClaimRequest claim, bool storePosition, Attempt attempt, CancellationToken cancellationToken);

    /// <summary>The state of one message's attempt that the failure paths need.</summary>
    protected sealed class Attempt
    {
        /// <summary>Gets or sets the store transaction, once begun; disposed at the end.</summary>
        public IIdempotencyTransaction? Transaction { get; set; }

        /// <summary>Gets or sets a value indicating whether the handler ran to completion (a commit refused for its writes is then its failure).</summary>
        public bool HandlerRan { get; set; }
    }
}
