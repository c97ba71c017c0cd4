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
    /// <see cref="PreTrainedTokenizer"/> and <see cref="IChatClient"/> (<see cref="RinnaChatClient"/>; concurrent requests share one continuous batch).
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

    /// <summary>
    /// Adds a second (third, ...) model side by side with others: the same services as
    /// <see cref="AddRinna(IServiceCollection, Action{RinnaOptions})"/> registered under <paramref name="serviceKey"/>
    /// (resolve them with <c>GetRequiredKeyedService&lt;IChatClient&gt;(key)</c> or <c>[FromKeyedServices(key)]</c>), each
    /// with its own options, load, retry and scheduler.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="serviceKey">The key of this model's services; its string form names its options.</param>
    /// <param name="configure">Sets this model's options.</param>
    public static IServiceCollection AddKeyedRinna(this IServiceCollection services, object serviceKey, Action<RinnaOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.Configure(OptionsName(serviceKey), configure);
        return AddKeyedCore(services, serviceKey);
    }

    /// <summary>As <see cref="AddKeyedRinna(IServiceCollection, object, Action{RinnaOptions})"/>, binding the options from a configuration section.</summary>
    public static IServiceCollection AddKeyedRinna(this IServiceCollection services, object serviceKey, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        services.Configure<RinnaOptions>(OptionsName(serviceKey), configuration);
        return AddKeyedCore(services, serviceKey);
    }

    private static string OptionsName(object serviceKey)
    {
        ArgumentNullException.ThrowIfNull(serviceKey);
        return "Rinna:" + (serviceKey.ToString() is { Length: > 0 } name ? name
            : throw new ArgumentException("The service key must have a non-empty string form (it names the options).", nameof(serviceKey)));
    }

    private static IServiceCollection AddKeyedCore(IServiceCollection services, object serviceKey)
    {
        string name = OptionsName(serviceKey);
        if (services.Any(d => d.IsKeyedService && Equals(d.ServiceKey, serviceKey) && d.ServiceType == typeof(RinnaModelHost)))
            throw new ArgumentException($"A Rinna model is already registered under the key '{serviceKey}'.", nameof(serviceKey));
        services.AddKeyedSingleton(serviceKey, (sp, _) => new RinnaModelHost(
            Options.Create(sp.GetRequiredService<IOptionsMonitor<RinnaOptions>>().Get(name)), sp.GetService<Microsoft.Extensions.Logging.ILoggerFactory>()));
        services.AddKeyedSingleton(serviceKey, (sp, key) => sp.GetRequiredKeyedService<RinnaModelHost>(key).GetAsync().GetAwaiter().GetResult().Model);
        services.AddKeyedSingleton(serviceKey, (sp, key) => sp.GetRequiredKeyedService<RinnaModelHost>(key).GetAsync().GetAwaiter().GetResult().Tokenizer);
        services.AddKeyedSingleton<IChatClient>(serviceKey, (sp, key) => new RinnaChatClient(sp.GetRequiredKeyedService<RinnaModelHost>(key)));
        services.AddSingleton<IHostedService>(sp => new RinnaPreloader(sp.GetRequiredKeyedService<RinnaModelHost>(serviceKey)));
        return services;
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
    private sealed class RinnaPreloader(RinnaModelHost host) : IHostedService
    {
        public async Task StartAsync(CancellationToken cancellationToken)
        {
            if (host.Options.LoadOnStart) await host.GetAsync(cancellationToken).ConfigureAwait(false);
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
