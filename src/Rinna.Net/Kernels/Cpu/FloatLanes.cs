using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>
/// The float32 vector operations a kernel written once for every width needs: the kernel is generic over a struct
/// implementing this, and the JIT compiles one copy per width with each call inlined (no interface dispatch), so one
/// source serves AVX-512, AVX2 and NEON.
/// </summary>
/// <typeparam name="TVector">The vector type, <c>Vector128&lt;float&gt;</c>, <c>Vector256&lt;float&gt;</c> or <c>Vector512&lt;float&gt;</c>.</typeparam>
internal unsafe interface IFloatLanes<TVector> where TVector : unmanaged
{
    /// <summary>float32 values per vector.</summary>
    static abstract int Count { get; }

    /// <summary>Whether this width runs on vector hardware here.</summary>
    static abstract bool IsHardwareAccelerated { get; }

    /// <summary>The vector at <paramref name="address"/>.</summary>
    static abstract TVector Load(float* address);

    /// <summary>Writes <paramref name="value"/> at <paramref name="address"/>.</summary>
    static abstract void Store(TVector value, float* address);

    /// <summary>The bfloat16 values at <paramref name="address"/> as float32 (exact: the bits are the top halves).</summary>
    static abstract TVector LoadBFloat16(ushort* address);

    /// <summary>The sum of the lanes.</summary>
    static abstract float Sum(TVector value);

    /// <summary>Every lane <paramref name="value"/>.</summary>
    static abstract TVector Broadcast(float value);

    /// <summary>Lane <c>i</c> is <c>start + i</c>.</summary>
    static abstract TVector Indices(float start);

    /// <summary><c>a·b + c</c> rounded once.</summary>
    static abstract TVector MultiplyAdd(TVector a, TVector b, TVector c);

    /// <summary><c>a·b</c>.</summary>
    static abstract TVector Multiply(TVector a, TVector b);

    /// <summary><c>a + b</c>.</summary>
    static abstract TVector Add(TVector a, TVector b);

    /// <summary><c>a − b</c>.</summary>
    static abstract TVector Subtract(TVector a, TVector b);

    /// <summary>The larger of each pair (the hardware's own maximum; no NaN reaches it here).</summary>
    static abstract TVector Max(TVector a, TVector b);

    /// <summary><c>eˣ</c> per lane (0 for −∞).</summary>
    static abstract TVector Exp(TVector x);

    /// <summary>Each lane of <paramref name="value"/>, or <paramref name="replacement"/> where <c>a &lt; b</c>.</summary>
    static abstract TVector ReplaceWhereLess(TVector a, TVector b, TVector value, TVector replacement);
}

/// <summary>128-bit lanes: NEON on Arm64, SSE on x64.</summary>
internal readonly unsafe struct FloatLanes128 : IFloatLanes<Vector128<float>>
{
    public static int Count => Vector128<float>.Count;
    public static bool IsHardwareAccelerated => Vector128.IsHardwareAccelerated;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Load(float* address) => Vector128.Load(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector128<float> value, float* address) => value.Store(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> LoadBFloat16(ushort* address) => Vector128.ShiftLeft(Vector128.WidenLower(Vector64.Load(address).ToVector128Unsafe()), 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector128<float> value) => Vector128.Sum(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Broadcast(float value) => Vector128.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Indices(float start) => Vector128<float>.Indices + Vector128.Create(start);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> MultiplyAdd(Vector128<float> a, Vector128<float> b, Vector128<float> c) => Vector128.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Multiply(Vector128<float> a, Vector128<float> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Add(Vector128<float> a, Vector128<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Subtract(Vector128<float> a, Vector128<float> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Max(Vector128<float> a, Vector128<float> b) => Vector128.MaxNative(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Exp(Vector128<float> x) => Vector128.Exp(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> ReplaceWhereLess(Vector128<float> a, Vector128<float> b, Vector128<float> value, Vector128<float> replacement) =>
        Vector128.ConditionalSelect(Vector128.LessThan(a, b), replacement, value);
}

/// <summary>256-bit lanes: AVX2 on x64.</summary>
internal readonly unsafe struct FloatLanes256 : IFloatLanes<Vector256<float>>
{
    public static int Count => Vector256<float>.Count;
    public static bool IsHardwareAccelerated => Vector256.IsHardwareAccelerated;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Load(float* address) => Vector256.Load(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector256<float> value, float* address) => value.Store(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> LoadBFloat16(ushort* address) => Vector256.ShiftLeft(Vector256.WidenLower(Vector128.Load(address).ToVector256Unsafe()), 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector256<float> value) => Vector256.Sum(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Broadcast(float value) => Vector256.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Indices(float start) => Vector256<float>.Indices + Vector256.Create(start);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Multiply(Vector256<float> a, Vector256<float> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Add(Vector256<float> a, Vector256<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Subtract(Vector256<float> a, Vector256<float> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Max(Vector256<float> a, Vector256<float> b) => Vector256.MaxNative(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Exp(Vector256<float> x) => Vector256.Exp(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> ReplaceWhereLess(Vector256<float> a, Vector256<float> b, Vector256<float> value, Vector256<float> replacement) =>
        Vector256.ConditionalSelect(Vector256.LessThan(a, b), replacement, value);
}

/// <summary>512-bit lanes: AVX-512 on x64.</summary>
internal readonly unsafe struct FloatLanes512 : IFloatLanes<Vector512<float>>
{
    public static int Count => Vector512<float>.Count;
    public static bool IsHardwareAccelerated => Vector512.IsHardwareAccelerated;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Load(float* address) => Vector512.Load(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void Store(Vector512<float> value, float* address) => value.Store(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> LoadBFloat16(ushort* address) => Vector512.ShiftLeft(Vector512.WidenLower(Vector256.Load(address).ToVector512Unsafe()), 16).AsSingle();
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static float Sum(Vector512<float> value) => Vector512.Sum(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Broadcast(float value) => Vector512.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Indices(float start) => Vector512<float>.Indices + Vector512.Create(start);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Multiply(Vector512<float> a, Vector512<float> b) => a * b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Add(Vector512<float> a, Vector512<float> b) => a + b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Subtract(Vector512<float> a, Vector512<float> b) => a - b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Max(Vector512<float> a, Vector512<float> b) => Vector512.MaxNative(a, b);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Exp(Vector512<float> x) => Vector512.Exp(x);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> ReplaceWhereLess(Vector512<float> a, Vector512<float> b, Vector512<float> value, Vector512<float> replacement) =>
        Vector512.ConditionalSelect(Vector512.LessThan(a, b), replacement, value);
}
