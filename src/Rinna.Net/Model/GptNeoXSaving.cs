using System.Text.Json;
using System.Text.Json.Nodes;
using Rinna.Net.Checkpoint;
using static TorchSharp.torch;

namespace Rinna.Net.Model;

/// <summary>Saves a <see cref="GptNeoXForCausalLM"/> in Hugging Face's model-directory layout.</summary>
public static class GptNeoXSaving
{
    /// <summary>
    /// HF's <c>model.save_pretrained(directory, safe_serialization=True)</c>: writes <c>config.json</c> (with
    /// <c>torch_dtype</c>), <c>generation_config.json</c> and a single <c>model.safetensors</c>, each replaced atomically, so
    /// the directory loads with <c>AutoModelForCausalLM</c> and has the layout transformers' <c>from_pretrained</c> reads.
    /// </summary>
    /// <param name="model">A model with dense weights (an int8-quantized model cannot be saved).</param>
    /// <param name="directory">Created if missing; existing files of the same names are replaced.</param>
    /// <param name="dtype">Element type to store the weights in (float32, float16 or bfloat16); <c>null</c> keeps the model's.</param>
    /// <param name="cancellationToken">Checked between tensors.</param>
    /// <exception cref="ArgumentException"><paramref name="dtype"/> is not a floating-point type transformers loads.</exception>
    /// <exception cref="InvalidOperationException">The model's weights are not all dense parameters with HF's names.</exception>
    /// <exception cref="CheckpointException">A file cannot be written.</exception>
    public static void SavePretrained(this GptNeoXForCausalLM model, string directory, ScalarType? dtype = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        var storedType = dtype ?? model.ComputeDType;
        var dtypeName = storedType switch
        {
            ScalarType.Float32 => "float32",
            ScalarType.Float16 => "float16",
            ScalarType.BFloat16 => "bfloat16",
            _ => throw new ArgumentException($"weights can be saved as float32, float16 or bfloat16, not {storedType}.", nameof(dtype)),
        };

        var parameters = model.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter, StringComparer.Ordinal);
        var expected = GptNeoXForCausalLM.ExpectedParameterShapes(model.Config);
        var missing = expected.Keys.Where(name => !parameters.ContainsKey(name)).ToList();
        if (missing.Count > 0)
            throw new InvalidOperationException(
                $"the model has no dense parameter {string.Join(", ", missing.Take(3))}{(missing.Count > 3 ? ", ..." : "")}; quantized models cannot be saved.");

        Directory.CreateDirectory(directory);
        using (var scope = NewDisposeScope())
        {
            var tensors = expected.Keys.ToDictionary(name => name, name => parameters[name].detach().to(storedType), StringComparer.Ordinal);
            SafetensorsWriter.Save(Path.Combine(directory, "model.safetensors"), tensors, cancellationToken: cancellationToken);
        }
        WriteTextAtomically(Path.Combine(directory, "config.json"), (model.Config with { TorchDtype = dtypeName }).ToJson());
        WriteTextAtomically(Path.Combine(directory, "generation_config.json"), GenerationConfigJson(model.Config));
    }

    /// <summary>What transformers writes as <c>generation_config.json</c> for a model whose config has no generation overrides.</summary>
    internal static string GenerationConfigJson(GptNeoXConfig config) => new JsonObject
    {
        ["_from_model_config"] = true,
        ["bos_token_id"] = config.BosTokenId,
        ["eos_token_id"] = config.EosTokenId,
    }.ToJsonString(new JsonSerializerOptions { WriteIndented = true });

    private static void WriteTextAtomically(string path, string text)
    {
        var temporary = path + $".{Environment.ProcessId}.tmp";
        try
        {
            File.WriteAllText(temporary, text + "\n");
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            File.Delete(temporary);
            throw new CheckpointException(path, $"cannot write the file ({ex.Message}).", ex);
        }
    }
}
