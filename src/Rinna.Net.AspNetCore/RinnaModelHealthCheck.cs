using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Rinna.Net.Integration;

namespace Rinna.Net.AspNetCore;

/// <summary>
/// Reports the load state of the model registered with <c>AddRinna</c>: healthy once loaded, degraded while it has
/// not loaded yet (it loads on first use unless <see cref="RinnaOptions.LoadOnStart"/>), unhealthy after a failed load,
/// with the reason (the next request retries the load after <see cref="RinnaOptions.LoadRetryDelay"/>).
/// </summary>
public sealed class RinnaModelHealthCheck : IHealthCheck
{
    private readonly RinnaModelHost host;

    /// <summary>Creates the check for <paramref name="host"/>.</summary>
    public RinnaModelHealthCheck(RinnaModelHost host) => this.host = host ?? throw new ArgumentNullException(nameof(host));

    /// <inheritdoc />
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var (loaded, failure) = host.LoadState;
        var data = new Dictionary<string, object> { ["model"] = host.Options.ModelId };
        var result = loaded ? HealthCheckResult.Healthy("The model is loaded.", data)
            : failure is not null ? new HealthCheckResult(context.Registration.FailureStatus, $"The model failed to load: {failure.Message}", failure, data)
            : HealthCheckResult.Degraded("The model has not loaded yet.", data: data);
        return Task.FromResult(result);
    }
}

/// <summary>Registers <see cref="RinnaModelHealthCheck"/>.</summary>
public static class RinnaHealthChecksBuilderExtensions
{
    /// <summary>Adds a health check named <paramref name="name"/> reporting the load state of the model registered with <c>AddRinna</c>.</summary>
    /// <param name="builder">The health checks builder (<c>services.AddHealthChecks()</c>).</param>
    /// <param name="name">The check's name in reports.</param>
    /// <param name="failureStatus">The status of a failed load; <c>null</c> means <see cref="HealthStatus.Unhealthy"/>.</param>
    /// <param name="tags">Tags to filter checks by (e.g. <c>"ready"</c>).</param>
    public static IHealthChecksBuilder AddRinnaModel(this IHealthChecksBuilder builder, string name = "rinna", HealthStatus? failureStatus = null,
        IEnumerable<string>? tags = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        return builder.Add(new HealthCheckRegistration(name, sp => new RinnaModelHealthCheck(sp.GetRequiredService<RinnaModelHost>()), failureStatus, tags));
    }
}
