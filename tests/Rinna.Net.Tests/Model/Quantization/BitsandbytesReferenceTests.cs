using System.Text.Json;
using Rinna.Net.Checkpoint;
using Rinna.Net.Model;
using Rinna.Net.Model.Quantization;
using static TorchSharp.torch;

namespace Rinna.Net.Tests.Model.Quantization;

/// <summary>
/// load_in_4bit against bitsandbytes itself: codes, block scales and dequantized weights written by bitsandbytes' CUDA
/// kernels, and logits of transformers' <c>load_in_4bit</c> models (fixtures/bnb4bit, made by its tools/bnb_ref.py).
/// </summary>
public class BitsandbytesReferenceTests
{
    private static string Folder => Fixtures.Path("bnb4bit");

    private static readonly (string Type, bool DoubleQuant)[] Variants =
        [(Bnb4BitQuantization.Nf4, false), (Bnb4BitQuantization.Nf4, true), (Bnb4BitQuantization.Fp4, false), (Bnb4BitQuantization.Fp4, true)];

    private static readonly string[] Models = ["tiny-neox-pythia", "tiny-neox-rinna", "tiny-neox-rinna-fp16"];

    public static TheoryData<string, string, string, bool> CraftedCases
    {
        get
        {
            var data = new TheoryData<string, string, string, bool>();
            foreach (var kind in new[] { "crafted", "ties" })
                foreach (var dtype in new[] { "float32", "float16", "bfloat16" })
                    foreach (var (type, dq) in Variants) data.Add(kind, dtype, type, dq);
            return data;
        }
    }

    public static TheoryData<string, string, bool> ModelCases
    {
        get
        {
            var data = new TheoryData<string, string, bool>();
            foreach (var model in Models)
                foreach (var (type, dq) in Variants) data.Add(model, type, dq);
            return data;
        }
    }

    private static string Suffix(string type, bool dq) => dq ? $"{type}.dq" : type;

    /// <summary>
    /// "crafted": a [37, 101] weight (a partial last block) with all-zero, one-value, code-book-threshold,
    /// near-overflow and subnormal blocks. "ties": 1024 blocks of code thresholds times the block's absmax, where the
    /// GPU's approximate reciprocal decides. Codes, scales and dequantized values are bitsandbytes' bit for bit.
    /// </summary>
    [Theory]
    [MemberData(nameof(CraftedCases))]
    public void CraftedWeightQuantizesAsBitsandbytesCuda(string kind, string dtype, string type, bool dq)
    {
        using var file = SafetensorsFile.Open(System.IO.Path.Combine(Folder, "quantized.safetensors"));
        using var input = file.ReadTensor($"{kind}.{dtype}.input");
        string prefix = $"{kind}.{dtype}.{Suffix(type, dq)}";
        using var layer = new Bnb4BitLinear(input, quantType: type, useDoubleQuant: dq);
        AssertStorageEqual(file, prefix, layer);
        // bitsandbytes dequantizes to the weight's dtype (code · absmax in float32, then rounded once). With double
        // quantization, from bitsandbytes' own scale codes and offset (ours can differ in the offset's last bit).
        // The "ties" blocks keep codes and scales only.
        if (!file.Contains(prefix + ".dequantized")) return;
        using var expected = file.ReadTensor(prefix + ".dequantized");
        using var actual = dq ? DequantizeFrom(file, prefix, layer, input) : layer.DequantizeWeight(input.dtype);
        AssertBitwiseEqual(expected.flatten(), actual.to(ScalarType.Float32).flatten(), prefix + " dequantized");
    }

    /// <summary>Our dequantization (scales, then weights) applied to bitsandbytes' stored double-quantized state.</summary>
    private static Tensor DequantizeFrom(SafetensorsFile file, string prefix, Bnb4BitLinear layer, Tensor input)
    {
        using var codes = file.ReadTensor(prefix + ".absmax_codes");
        using var absmax2 = file.ReadTensor(prefix + ".absmax2");
        float offset = file.ReadTensor(prefix + ".offset").item<float>();
        var scaleCodes = codes.bytes.ToArray();
        var nested = absmax2.data<float>().ToArray();
        var scales = Enumerable.Range(0, scaleCodes.Length).Select(b => Bnb4BitQuantization.DequantizeAbsmax(scaleCodes, nested, offset, b)).ToArray();
        var values = new float[input.numel()];
        using (var packed = file.ReadTensor(prefix + ".codes"))
            Bnb4BitQuantization.DequantizeRange(packed.bytes, scales, layer.Code, 0, values);
        return tensor(values).reshape(input.shape).to(input.dtype);
    }

    /// <summary>Every linear weight of the tiny fixtures, as bitsandbytes' CUDA kernels quantize it.</summary>
    [Theory]
    [MemberData(nameof(ModelCases))]
    public void FixtureWeightsQuantizeAsBitsandbytesCuda(string model, string type, bool dq)
    {
        using var file = SafetensorsFile.Open(System.IO.Path.Combine(Folder, "quantized.safetensors"));
        int layers = 0;
        foreach (var path in Directory.GetFiles(Fixtures.Model(model), "*.safetensors").Where(p => !p.EndsWith("expected.safetensors", StringComparison.Ordinal)))
        {
            using var checkpoint = SafetensorsFile.Open(path);
            foreach (var entry in checkpoint.Entries.Where(e => e.Name.StartsWith("gpt_neox.layers.", StringComparison.Ordinal) && e.Shape.Length == 2))
            {
                using var weight = checkpoint.ReadTensor(entry.Name);
                using var layer = new Bnb4BitLinear(weight, quantType: type, useDoubleQuant: dq);
                AssertStorageEqual(file, $"{model}.{entry.Name}.{Suffix(type, dq)}", layer);
                layers++;
            }
        }
        using var config = JsonDocument.Parse(File.ReadAllText(System.IO.Path.Combine(Fixtures.Model(model), "config.json")));
        Assert.Equal(4 * config.RootElement.GetProperty("num_hidden_layers").GetInt32(), layers);
    }

    /// <summary>
    /// Logits of our <c>LoadIn4Bit</c> model (float32 compute) against transformers' <c>load_in_4bit</c> with
    /// bitsandbytes on a GPU (float32 compute, TF32 off): the prompt's last position (several rows: dequantize and
    /// multiply) and one decode step after it (one row: our 4-bit GEMV, bitsandbytes' <c>gemv_4bit</c> where the
    /// width is a multiple of 64). Both compute <c>x · dequantize(W)ᵀ</c> in float32, summed in different orders.
    /// </summary>
    [Theory]
    [MemberData(nameof(ModelCases))]
    public async Task LogitsMatchTransformersLoadIn4Bit(string model, string type, bool dq)
    {
        string tag = $"{model}.{Suffix(type, dq)}";
        using var logits = SafetensorsFile.Open(System.IO.Path.Combine(Folder, "logits.safetensors"));
        var meta = JsonDocument.Parse(File.ReadAllText(System.IO.Path.Combine(Folder, "reference.json"))).RootElement.GetProperty("logits").GetProperty(tag);
        using var reference = new ReferenceModel(model);
        using var ours = await AutoModelForCausalLM.FromPretrainedAsync(Fixtures.Model(model), new ModelLoadOptions
        {
            TorchDtype = TorchDtype.Float32,
            QuantizationConfig = new QuantizationConfig { LoadIn4Bit = true, Bnb4BitQuantType = type, Bnb4BitUseDoubleQuant = dq },
        });
        int prompts = 0;
        foreach (var prompt in reference.Prompts)
        {
            using var scope = NewDisposeScope();
            string name = prompt.GetProperty("name").GetString()!;
            var ids = tensor(ReferenceModel.Ids(prompt.GetProperty("input_ids")), ScalarType.Int64).unsqueeze(0);
            using var output = ours.Forward(ids, useCache: true);
            TensorAssert.WithinFloat32Rounding(logits.ReadTensor($"{tag}.{name}.prompt"), output.Logits[0, -1], $"{tag} {name} prompt");
            long next = meta.GetProperty("prompts").GetProperty(name).GetProperty("next_token").GetInt64();
            using var step = ours.Forward(tensor(new[] { next }, ScalarType.Int64).reshape(1, 1), pastKeyValues: output.PastKeyValues);
            TensorAssert.WithinFloat32Rounding(logits.ReadTensor($"{tag}.{name}.decode"), step.Logits[0, -1], $"{tag} {name} decode");
            prompts++;
        }
        Assert.Equal(5, prompts);
    }

    private static void AssertStorageEqual(SafetensorsFile file, string prefix, Bnb4BitLinear layer)
    {
        using var codes = file.ReadTensor(prefix + ".codes");
        Assert.True(codes.bytes.SequenceEqual(layer.Weight.bytes), $"{prefix}: packed codes differ from bitsandbytes'");
        if (!layer.UsesDoubleQuant)
        {
            using var absmax = file.ReadTensor(prefix + ".absmax");
            AssertBitwiseEqual(absmax, layer.Absmax, prefix + " absmax");
            return;
        }
        // The offset is a mean: libtorch's on the CPU, the GPU's summed in another order.
        float offset = file.ReadTensor(prefix + ".offset").item<float>();
        Assert.True(Math.Abs(BitConverter.SingleToInt32Bits(offset) - BitConverter.SingleToInt32Bits(layer.Offset)) <= 2,
            $"{prefix}: offset {layer.Offset:R}, bitsandbytes has {offset:R}");
        // From bitsandbytes' own block scales and offset, the 8-bit codes and their scales are bitsandbytes'.
        using var plain = file.ReadTensor(prefix[..^".dq".Length] + ".absmax");
        var (scaleCodes, absmax2, _) = Bnb4BitQuantization.DoubleQuantize(plain.data<float>().ToArray(), offset);
        using var expectedCodes = file.ReadTensor(prefix + ".absmax_codes");
        Assert.True(expectedCodes.bytes.SequenceEqual(scaleCodes), $"{prefix}: 8-bit absmax codes differ from bitsandbytes'");
        using var expectedAbsmax2 = file.ReadTensor(prefix + ".absmax2");
        using var actualAbsmax2 = tensor(absmax2);
        AssertBitwiseEqual(expectedAbsmax2, actualAbsmax2, prefix + " absmax2");
        using var map = file.ReadTensor(prefix + ".dynamic_map");
        using var ourMap = tensor(Bnb4BitQuantization.DynamicMap);
        AssertBitwiseEqual(map, ourMap, prefix + " dynamic map");
    }

    private static void AssertBitwiseEqual(Tensor expected, Tensor actual, string what)
    {
        var e = expected.data<float>().ToArray();
        var a = actual.data<float>().ToArray();
        Assert.Equal(e.Length, a.Length);
        for (int i = 0; i < e.Length; i++)
            Assert.True(BitConverter.SingleToInt32Bits(e[i]) == BitConverter.SingleToInt32Bits(a[i]), $"{what}: element {i} is {a[i]:R}, bitsandbytes has {e[i]:R}");
    }
}
