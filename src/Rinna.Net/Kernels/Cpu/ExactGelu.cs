using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// The exact GELU as libtorch computes it in float32, <c>x · ½ · (1 + erf(x · √½))</c>, operation by operation, so that
/// it rounds (and, for very negative x, cancels to zero) where libtorch's does. erf is <c>1 − erfc</c> with Numerical
/// Recipes' Chebyshev fit of erfc in float64 (relative error below 1.2·10⁻⁷), so <c>1 + erf</c> is within about two
/// float32 units of libtorch's own approximation. The GEMV kernels apply it to their outputs when a GELU follows.
/// </summary>
internal static class ExactGelu
{
    /// <summary>GELU of one value.</summary>
    public static float Apply(float x)
    {
        float scaled = x * Sqrt1Over2;
        double z = Math.Abs(scaled), t = 1 / (1 + 0.5 * z);
        double erfc = t * Math.Exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (-0.18628806
            + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))));
        float erf = (float)(scaled >= 0 ? 1 - erfc : erfc - 1);
        return x * 0.5f * (1 + erf);
    }

    /// <summary>
    /// GELU of each value, in place: four at a time with the same operations in float64 lanes (a layer's GELUs cost as
    /// much as a small layer's weight stream when each calls the scalar exp). The vectorized exp may differ from
    /// <see cref="Math.Exp"/> in its last float64 bit, which moves a float32 result only where it lies on a rounding boundary.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Apply(Span<float> values)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 4 <= values.Length; i += 4)
                Apply4(Vector128.Create(values.Slice(i, 4))).CopyTo(values.Slice(i, 4));
        for (; i < values.Length; i++) values[i] = Apply(values[i]);
    }

    /// <summary>GELU of each lane, as <see cref="Apply(Span{float})"/> computes it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> Apply(Vector128<float> values) => Vector256.IsHardwareAccelerated ? Apply4(values)
        : Vector128.Create(Apply(values.GetElement(0)), Apply(values.GetElement(1)), Apply(values.GetElement(2)), Apply(values.GetElement(3)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Apply4(Vector128<float> x)
    {
        var scaled = x * Vector128.Create(Sqrt1Over2);
        var z = Vector256.Abs(Vector256.Create(Vector128.WidenLower(scaled), Vector128.WidenUpper(scaled)));
        var one = Vector256.Create(1.0);
        var t = one / (one + Vector256.Create(0.5) * z);
        var poly = Vector256.Create(1.00002368) + t * (Vector256.Create(0.37409196) + t * (Vector256.Create(0.09678418) + t * (Vector256.Create(-0.18628806)
            + t * (Vector256.Create(0.27886807) + t * (Vector256.Create(-1.13520398) + t * (Vector256.Create(1.48851587) + t * (Vector256.Create(-0.82215223)
            + t * Vector256.Create(0.17087277))))))));
        var erfc = t * Vector256.Exp(-z * z - Vector256.Create(1.26551223) + t * poly);
        var positive = Vector256.GreaterThanOrEqual(Vector256.Create(Vector128.WidenLower(scaled), Vector128.WidenUpper(scaled)), Vector256<double>.Zero);
        var erf64 = Vector256.ConditionalSelect(positive, one - erfc, erfc - one);
        var erf = Vector128.Narrow(erf64.GetLower(), erf64.GetUpper());
        return x * Vector128.Create(0.5f) * (Vector128.Create(1f) + erf);
    }

    private const float Sqrt1Over2 = 0.70710677f;
}
