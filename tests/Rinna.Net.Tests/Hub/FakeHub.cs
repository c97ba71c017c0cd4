using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Rinna.Net.Tests.Hub;

/// <summary>
/// A Hugging Face hub on 127.0.0.1 speaking the resolve protocol huggingface_hub relies on: HEAD/GET
/// <c>/{org}/{name}/resolve/{revision}/{file}</c> with <c>X-Repo-Commit</c> and a git-sha1 <c>ETag</c> for small files, a 302 to
/// a CDN at <c>localhost</c> (another host name, same listener) with <c>X-Linked-Etag</c> = sha256 and <c>X-Linked-Size</c>
/// for LFS files, <c>X-Error-Code</c> on errors, and <c>Range</c> on the CDN. Faults are injected per test, each naming one file:
/// <list type="bullet">
/// <item><b>cut</b>: <see cref="DropFile"/> sends some bytes, then drops the connection once; <see cref="StallFile"/> sends some,
/// then sends nothing until the client hangs up.</item>
/// <item><b>slow</b>: <see cref="TrickleFile"/> sends one byte every <see cref="TrickleInterval"/>, for ever.</item>
/// <item><b>lying</b>: <see cref="CorruptFile"/> flips a byte (the etag lies); <see cref="SizeLie"/> announces a size off by a
/// delta; <see cref="UnannouncedSizeFile"/> announces no size at all (no <c>X-Linked-Size</c>, no <c>Content-Length</c>).</item>
/// <item><b>endless</b>: <see cref="EndlessFile"/> is sent without <c>Content-Length</c>, its content followed by zeros until the
/// client hangs up (at most <see cref="EndlessLimitBytes"/>, so a client that never stops fails instead of filling the disk).</item>
/// <item><b>redirecting</b>: <see cref="ResolveRedirect"/> sends the resolve request of an LFS file to any location (another
/// scheme or host); <see cref="CdnRedirect"/> makes the CDN answer with a second redirect.</item>
/// <item>anything else: <see cref="Intercept"/> answers a request itself; <see cref="IgnoreRange"/> serves whole files only.</item>
/// </list>
/// Slow and endless bodies apply to plain files (served by the resolve URL) and LFS files (served by the CDN) alike.
/// </summary>
internal sealed class FakeHub : IAsyncDisposable
{
    private readonly WebApplication app;
    private readonly ConcurrentDictionary<string, FakeRepo> repos = new();
    private readonly ConcurrentDictionary<string, int> cdnGets = new();
    private readonly ConcurrentDictionary<string, bool> droppedOnce = new();

    private FakeHub(WebApplication app) => this.app = app;

    public static async Task<FakeHub> StartAsync()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseKestrel(options => options.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        var hub = new FakeHub(app);
        app.Run(hub.HandleAsync);
        await app.StartAsync();
        var address = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single());
        hub.Port = address.Port;
        return hub;
    }

    public int Port { get; private set; }

    /// <summary>The hub's own origin: the only one that may see the token.</summary>
    public string Endpoint => $"http://127.0.0.1:{Port}";

    /// <summary>Every request as the server saw it.</summary>
    public ConcurrentQueue<RecordedRequest> Requests { get; } = new();

    /// <summary>Runs before the protocol; returns <c>true</c> when it has answered the request itself.</summary>
    public Func<HttpContext, Task<bool>>? Intercept { get; set; }

    /// <summary>The first CDN GET of this file (without Range) sends <see cref="DropAfterBytes"/> bytes, then the connection is cut.</summary>
    public string? DropFile { get; set; }

    public long DropAfterBytes { get; set; }

    /// <summary>Awaited between sending the bytes and cutting the connection, so a test can wait until the client has them.</summary>
    public Func<HttpContext, Task>? BeforeDrop { get; set; }

    /// <summary>Every CDN GET of this file has one byte flipped, keeping the size.</summary>
    public string? CorruptFile { get; set; }

    /// <summary>CDN GETs of this file send <see cref="StallAfterBytes"/> bytes, signal <see cref="Stalled"/>, then wait until the client gives up.</summary>
    public string? StallFile { get; set; }

    public long StallAfterBytes { get; set; }

    public TaskCompletionSource Stalled { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>The CDN answers every GET with the whole file (200), as a server without Range support does.</summary>
    public bool IgnoreRange { get; set; }

    /// <summary>GETs of this file announce its size, then send one byte every <see cref="TrickleInterval"/> until the client hangs up.</summary>
    public string? TrickleFile { get; set; }

    public TimeSpan TrickleInterval { get; set; } = TimeSpan.FromMilliseconds(50);

    /// <summary>GETs of this file send no <c>Content-Length</c>: the content, then zeros until the client hangs up.</summary>
    public string? EndlessFile { get; set; }

    /// <summary>How many bytes past the content an endless body sends at most.</summary>
    public long EndlessLimitBytes { get; set; } = 256L << 20;

    /// <summary>Metadata of this file announces no size: neither <c>X-Linked-Size</c> nor <c>Content-Length</c>.</summary>
    public string? UnannouncedSizeFile { get; set; }

    /// <summary>Metadata of this file announces its size plus this delta (negative: less than the real size).</summary>
    public (string File, long Delta)? SizeLie { get; set; }

    /// <summary>The resolve request of this LFS file redirects to this location (with the real metadata headers).</summary>
    public (string File, string Location)? ResolveRedirect { get; set; }

    /// <summary>CDN GETs of this file answer 302 to this location instead of the content.</summary>
    public (string File, string Location)? CdnRedirect { get; set; }

    public FakeRepo AddRepo(string repoId, params string[] sourceDirectories)
    {
        var repo = new FakeRepo(repoId);
        foreach (var directory in sourceDirectories)
            foreach (var path in Directory.GetFiles(directory).Where(p => !System.IO.Path.GetFileName(p).StartsWith("expected", StringComparison.Ordinal)
                         && System.IO.Path.GetExtension(p) is not (".jsonl" or ".md")))
                repo.Files[System.IO.Path.GetFileName(path)] = FakeFile.Create(System.IO.Path.GetFileName(path), File.ReadAllBytes(path));
        repos[repoId] = repo;
        return repo;
    }

    public int CdnGets(string fileName) => cdnGets.GetValueOrDefault(fileName);

    public async ValueTask DisposeAsync() => await app.DisposeAsync();

    private async Task HandleAsync(HttpContext context)
    {
        var rawTarget = context.Features.Get<IHttpRequestFeature>()!.RawTarget;
        Requests.Enqueue(new RecordedRequest(
            context.Request.Method, context.Request.Host.Host, rawTarget,
            context.Request.Headers.Authorization.ToString() is { Length: > 0 } auth ? auth : null,
            context.Request.Headers.Range.ToString() is { Length: > 0 } range ? range : null));

        if (Intercept is { } intercept && await intercept(context)) return;

        var segments = rawTarget.Split('?')[0].Split('/', StringSplitOptions.RemoveEmptyEntries).Select(Uri.UnescapeDataString).ToArray();
        if (segments is ["cdn", var sha256]) await ServeCdnAsync(context, sha256);
        else if (segments.Length >= 5 && segments[2] == "resolve") await ServeResolveAsync(context, $"{segments[0]}/{segments[1]}", segments[3], string.Join('/', segments[4..]));
        else context.Response.StatusCode = 404;
    }

    private Task ServeResolveAsync(HttpContext context, string repoId, string revision, string fileName)
    {
        var response = context.Response;
        if (!repos.TryGetValue(repoId, out var repo))
            return Fail(response, 401, "RepoNotFound", "Repository not found");
        if (repo.RequiredToken is { } token && context.Request.Headers.Authorization != $"Bearer {token}")
            return Fail(response, 401, "GatedRepo", $"Access to model {repoId} is restricted. You must be authenticated to access it.");
        if (!repo.Revisions.TryGetValue(revision, out var commit))
            return Fail(response, 404, "RevisionNotFound", $"Invalid rev id: {revision}");

        response.Headers["X-Repo-Commit"] = repo.CommitHeader ?? commit;
        if (!repo.Files.TryGetValue(fileName, out var file))
            return Fail(response, 404, "EntryNotFound", $"{fileName} does not exist on \"{revision}\"");

        long? announced = fileName == UnannouncedSizeFile ? null
            : file.Content.Length + (SizeLie is { } lie && lie.File == fileName ? lie.Delta : 0);
        if (file.IsLfs)
        {
            response.StatusCode = 302;
            response.Headers.Location = ResolveRedirect is { } redirect && redirect.File == fileName
                ? redirect.Location
                : $"http://localhost:{Port}/cdn/{file.Sha256}?X-Amz-Signature=signed";
            response.Headers["X-Linked-Etag"] = $"\"{file.Sha256}\"";
            if (announced is { } size) response.Headers["X-Linked-Size"] = size.ToString();
            response.Headers.ETag = $"\"{file.GitSha1}\"";
            return Task.CompletedTask;
        }
        response.Headers.ETag = $"\"{file.GitSha1}\"";
        if (context.Request.Method == "HEAD")
        {
            response.ContentLength = announced;
            return Task.CompletedTask;
        }
        return SendBodyAsync(context, file.Name, file.Content, 0);
    }

    private async Task ServeCdnAsync(HttpContext context, string sha256)
    {
        var file = repos.Values.SelectMany(r => r.Files.Values).FirstOrDefault(f => f.Sha256 == sha256);
        if (file is null)
        {
            context.Response.StatusCode = 404;
            return;
        }
        cdnGets.AddOrUpdate(file.Name, 1, (_, n) => n + 1);

        var content = file.Content;
        if (file.Name == CorruptFile)
        {
            content = (byte[])content.Clone();
            content[content.Length / 2] ^= 0xFF;
        }
        if (CdnRedirect is { } redirect && redirect.File == file.Name)
        {
            context.Response.StatusCode = 302;
            context.Response.Headers.Location = redirect.Location;
            return;
        }
        long start = 0;
        if (!IgnoreRange && context.Request.Headers.Range.ToString() is { Length: > 0 } range)
        {
            start = long.Parse(range["bytes=".Length..].TrimEnd('-'));
            context.Response.StatusCode = 206;
            context.Response.Headers.ContentRange = $"bytes {start}-{content.Length - 1}/{content.Length}";
        }
        if (file.Name == TrickleFile || file.Name == EndlessFile)
        {
            await SendBodyAsync(context, file.Name, content, start);
            return;
        }
        context.Response.ContentLength = content.Length - start;

        if (file.Name == DropFile && start == 0 && droppedOnce.TryAdd(file.Name, true))
        {
            await context.Response.Body.WriteAsync(content.AsMemory(0, (int)DropAfterBytes));
            await context.Response.Body.FlushAsync();
            if (BeforeDrop is { } beforeDrop) await beforeDrop(context);
            context.Abort();
            return;
        }
        if (file.Name == StallFile)
        {
            await context.Response.Body.WriteAsync(content.AsMemory((int)start, (int)(StallAfterBytes - start)));
            await context.Response.Body.FlushAsync();
            Stalled.TrySetResult();
            try
            {
                await Task.Delay(Timeout.Infinite, context.RequestAborted);
            }
            catch (OperationCanceledException)
            {
            }
            return;
        }
        await context.Response.Body.WriteAsync(content.AsMemory((int)start));
    }

    /// <summary>A GET's body: trickled, endless, or whole with its <c>Content-Length</c>.</summary>
    private async Task SendBodyAsync(HttpContext context, string fileName, byte[] content, long start)
    {
        var response = context.Response;
        var aborted = context.RequestAborted;
        try
        {
            if (fileName == EndlessFile)
            {
                await response.Body.WriteAsync(content.AsMemory((int)start), aborted);
                var zeros = new byte[64 << 10];
                for (long sent = 0; sent < EndlessLimitBytes; sent += zeros.Length)
                    await response.Body.WriteAsync(zeros, aborted);
                return;
            }
            response.ContentLength = content.Length - start;
            if (fileName == TrickleFile)
            {
                for (var at = (int)start; at < content.Length; at++)
                {
                    await response.Body.WriteAsync(content.AsMemory(at, 1), aborted);
                    await response.Body.FlushAsync(aborted);
                    await Task.Delay(TrickleInterval, aborted);
                }
                return;
            }
            await response.Body.WriteAsync(content.AsMemory((int)start), aborted);
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException || aborted.IsCancellationRequested)
        {
            // The client hung up, which is how every hostile body is meant to end.
        }
    }

    private static Task Fail(HttpResponse response, int status, string errorCode, string message)
    {
        response.StatusCode = status;
        response.Headers["X-Error-Code"] = errorCode;
        response.Headers["X-Error-Message"] = message;
        return Task.CompletedTask;
    }
}

internal sealed record RecordedRequest(string Method, string Host, string Target, string? Authorization, string? Range);

internal sealed class FakeRepo(string repoId)
{
    public const string MainCommit = "5f3a0c1e9b7d24681357902468ace13579bdf024";

    public string RepoId { get; } = repoId;

    public ConcurrentDictionary<string, FakeFile> Files { get; } = new();

    /// <summary>Branches, tags and PR refs, each naming a commit; a commit also resolves to itself.</summary>
    public ConcurrentDictionary<string, string> Revisions { get; } = new(new Dictionary<string, string> { ["main"] = MainCommit, [MainCommit] = MainCommit });

    /// <summary>When set, requests without <c>Authorization: Bearer &lt;token&gt;</c> get 401 GatedRepo.</summary>
    public string? RequiredToken { get; set; }

    /// <summary>When set, sent as <c>X-Repo-Commit</c> instead of the real commit (a misbehaving server).</summary>
    public string? CommitHeader { get; set; }

    public void Put(string name, string content) => Files[name] = FakeFile.Create(name, Encoding.UTF8.GetBytes(content));
}

internal sealed record FakeFile(string Name, byte[] Content, bool IsLfs, string Sha256, string GitSha1)
{
    public static FakeFile Create(string name, byte[] content) => new(
        name,
        content,
        System.IO.Path.GetExtension(name) is ".safetensors" or ".bin" or ".model",
        Convert.ToHexStringLower(SHA256.HashData(content)),
        Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {content.Length}\0"), .. content])));

    /// <summary>The etag huggingface_hub names the blob after: sha256 for LFS files, the git blob sha1 otherwise.</summary>
    public string Etag => IsLfs ? Sha256 : GitSha1;
}
