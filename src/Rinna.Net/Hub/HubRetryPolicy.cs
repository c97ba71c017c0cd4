namespace Rinna.Net.Hub;

/// <summary>How often and how patiently a request is retried after a timeout, a dropped connection, HTTP 429 or 5xx.</summary>
/// <param name="MaxAttempts">Attempts in all, the first included.</param>
/// <param name="InitialDelay">Wait before the first retry; it doubles with every further retry.</param>
/// <param name="MaxDelay">Upper bound of one wait, also applied to a server's <c>Retry-After</c>.</param>
internal sealed record HubRetryPolicy(int MaxAttempts, TimeSpan InitialDelay, TimeSpan MaxDelay)
{
    /// <summary>huggingface_hub's numbers: 5 retries, 1 s doubling up to 8 s.</summary>
    public static HubRetryPolicy Default { get; } = new(6, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(8));

    public TimeSpan DelayBefore(int retry, TimeSpan? serverRequested)
    {
        var exponential = TimeSpan.FromTicks(Math.Min(MaxDelay.Ticks, InitialDelay.Ticks << Math.Min(retry - 1, 30)));
        return serverRequested is { } requested && requested > exponential
            ? (requested < MaxDelay ? requested : MaxDelay)
            : exponential;
    }
}

/// <summary>A failure worth retrying (timeout, dropped connection, HTTP 429 or 5xx); becomes a <see cref="HubException"/> when retries run out.</summary>
internal sealed class HubTransientFailure(int? statusCode, string description, Exception? innerException = null, TimeSpan? retryAfter = null)
    : Exception(description, innerException)
{
    public int? StatusCode { get; } = statusCode;

    public TimeSpan? RetryAfter { get; } = retryAfter;
}
