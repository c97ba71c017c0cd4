namespace Rinna.Net.Kernels.Cpu;

/// <summary>HF's <c>apply_rotary_pos_emb</c> for one head's q or k in float32, shared by the managed attention kernels.</summary>
internal static unsafe class RotaryEmbedding
{
    /// <summary>
    /// <c>x·cos + rotate_half(x)·sin</c> over the first <paramref name="rotaryDims"/> elements of <paramref name="x"/>
    /// (rotate_half([x1, x2]) = [−x2, x1]), the rest passed through, into <paramref name="destination"/>.
    /// </summary>
    public static void Rotate(float* x, float* cos, float* sin, int headSize, int rotaryDims, float* destination)
    {
        int half = rotaryDims / 2;
        for (int i = 0; i < rotaryDims; i++)
        {
            float rotated = i < half ? -x[i + half] : x[i - half];
            // Two rounded products, then the sum: what the separate float32 operations do (a fused multiply-add would not).
            float withCos = x[i] * cos[i], withSin = rotated * sin[i];
            destination[i] = withCos + withSin;
        }
        for (int i = rotaryDims; i < headSize; i++) destination[i] = x[i];
    }

    /// <summary>
    /// <see cref="Rotate(float*, float*, float*, int, int, float*)"/> of the head at element <paramref name="source"/> of a
    /// fused projection held in bfloat16 or float32, widened to float32 first as HF's float32 rotary tables make it.
    /// </summary>
    public static void RotateFrom(void* projected, bool bfloat16, long source, float* cos, float* sin, int headSize, int rotaryDims, float* destination)
    {
        float* x = stackalloc float[headSize];
        if (bfloat16) BFloat16Bits.Widen(new ReadOnlySpan<ushort>((ushort*)projected + source, headSize), new Span<float>(x, headSize));
        else new ReadOnlySpan<float>((float*)projected + source, headSize).CopyTo(new Span<float>(x, headSize));
        Rotate(x, cos, sin, headSize, rotaryDims, destination);
    }
}
