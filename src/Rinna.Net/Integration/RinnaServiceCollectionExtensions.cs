using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Rinna.Net.Model;
using Rinna.Net.Tokenization;

namespace Rinna.Net.Integration;

/// <summary>Registers a rinna model, its tokenizer and an <see cref="IChatClient"/> in a service collection.</summary>
public static class RinnaServiceCollectionExtensions
{
    /// <summary>
    /// Adds <see cref="RinnaModelHost"/> (loads once; disposed with the container), <see cref="GptNeoXForCausalLM"/>,
    /// <see cref="PreTrainedTokenizer"/> and <see cref="IChatClient"/> (<see cref="RinnaChatClient"/>, requests served one at a time).
    /// The model loads on first use, or when the host starts if <see cref="RinnaOptions.LoadOnStart"/> is set.
    /// </summary>
    public static IServiceCollection AddRinna(this IServiceCollection services, Action<RinnaOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.Configure(configure);
        return AddCore(services);
    }

    /// <summary>As <see cref="AddRinna(IServiceCollection, Action{RinnaOptions})"/>, binding <see cref="RinnaOptions"/> from a configuration section (e.g. <c>"Rinna"</c>).</summary>
    public static IServiceCollection AddRinna(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        services.Configure<RinnaOptions>(configuration);
        return AddCore(services);
    }

    private static IServiceCollection AddCore(IServiceCollection services)
    {
        services.TryAddSingleton<RinnaModelHost>();
        // Resolving these blocks until the model is loaded; IChatClient does not (it loads asynchronously on first request).
        services.TryAddSingleton(sp => sp.GetRequiredService<RinnaModelHost>().GetAsync().GetAwaiter().GetResult().Model);
        services.TryAddSingleton(sp => sp.GetRequiredService<RinnaModelHost>().GetAsync().GetAwaiter().GetResult().Tokenizer);
        services.TryAddSingleton<IChatClient>(sp => new RinnaChatClient(sp.GetRequiredService<RinnaModelHost>()));
        services.AddHostedService<RinnaPreloader>();
        return services;
    }

    /// <summary>Loads the model while the host starts when <see cref="RinnaOptions.LoadOnStart"/> is set.</summary>
    private sealed class RinnaPreloader(RinnaModelHost host, IOptions<RinnaOptions> options) : IHostedService
    {
        public async Task StartAsync(CancellationToken cancellationToken)
        {
            if (options.Value.LoadOnStart) await host.GetAsync(cancellationToken).ConfigureAwait(false);
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
