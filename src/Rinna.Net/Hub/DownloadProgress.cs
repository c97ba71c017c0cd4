namespace Rinna.Net.Hub;

/// <summary>Progress of one file being downloaded from the hub, reported through <see cref="IProgress{T}"/>.</summary>
/// <param name="File">The file in the repository, e.g. <c>model.safetensors</c>.</param>
/// <param name="BytesDownloaded">Bytes of the file on disk so far, including what an earlier interrupted download left.</param>
/// <param name="TotalBytes">The size of the file announced by the hub; 0 while a server that announces no size is still sending.</param>
/// <param name="BytesPerSecond">Transfer rate of the current attempt, averaged since it started.</param>
public sealed record DownloadProgress(string File, long BytesDownloaded, long TotalBytes, double BytesPerSecond);
