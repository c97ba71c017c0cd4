using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Rinna.Net.Kernels.Cpu;

/// <summary>The vector width a kernel written over <see cref="IFloatLanes{TVector}"/> runs at.</summary>
internal enum LaneWidth
{
    /// <summary>128-bit portable vectors (<see cref="FloatLanes128"/>): NEON on Arm64, SSE on x64.</summary>
    Vector128,

    /// <summary>256-bit portable vectors (<see cref="FloatLanes256"/>): AVX2 on x64.</summary>
    Vector256,
}

/// <summary>Which <see cref="LaneWidth"/> runs in hardware here.</summary>
internal static class LaneWidths
{
    /// <summary>
    /// 256 bits where the CPU runs them in hardware (x64 with AVX2; AVX-512 machines too, where rows of a few thousand
    /// elements and heads of 64–128 gain nothing from wider vectors), else 128 (NEON on Arm64). A width the CPU lacks
    /// runs in .NET's slower software fallback, so row kernels take this one.
    /// </summary>
    public static LaneWidth Default { get; } = Vector256.IsHardwareAccelerated ? LaneWidth.Vector256 : LaneWidth.Vector128;

    /// <summary>Whether the CPU runs <paramref name="width"/> in hardware.</summary>
    public static bool IsAccelerated(LaneWidth width) =>
        width == LaneWidth.Vector256 ? Vector256.IsHardwareAccelerated : Vector128.IsHardwareAccelerated;
}

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

    /// <summary><c>|value|</c> per lane.</summary>
    static abstract TVector Abs(TVector value);

    /// <summary><c>a / b</c>, correctly rounded.</summary>
    static abstract TVector Divide(TVector a, TVector b);

    /// <summary>The int32 values at <paramref name="address"/> as float32 (rounded to nearest).</summary>
    static abstract TVector LoadInt32(int* address);

    /// <summary>Each lane as bfloat16 holds it (<see cref="BFloat16Bits.RoundTrip(float)"/>).</summary>
    static abstract TVector RoundTripBFloat16(TVector value);

    /// <summary>Writes each lane rounded to bfloat16 (<see cref="BFloat16Bits.Round(float)"/>) at <paramref name="address"/>.</summary>
    static abstract void StoreBFloat16(TVector value, ushort* address);

    /// <summary>
    /// Writes four vectors' lanes, each rounded half to even and converted to int8, as <c>4 · Count</c> consecutive bytes
    /// at <paramref name="address"/>; every lane must round into int8's range.
    /// </summary>
    static abstract void StoreRoundedSBytes(TVector a, TVector b, TVector c, TVector d, sbyte* address);
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
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Abs(Vector128<float> value) => Vector128.Abs(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Divide(Vector128<float> a, Vector128<float> b) => a / b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> LoadInt32(int* address) => Vector128.ConvertToSingle(Vector128.Load(address));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> RoundTripBFloat16(Vector128<float> value) => BFloat16Bits.RoundTrip(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreBFloat16(Vector128<float> value, ushort* address) => Unsafe.WriteUnaligned(address, BFloat16Bits.Round(value).AsUInt64().ToScalar());
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreRoundedSBytes(Vector128<float> a, Vector128<float> b, Vector128<float> c, Vector128<float> d, sbyte* address)
    {
        static Vector128<int> Code(Vector128<float> value) => Vector128.ConvertToInt32(Vector128.Round(value));
        var low = Vector128.Narrow(Code(a), Code(b));
        var high = Vector128.Narrow(Code(c), Code(d));
        Vector128.Narrow(low, high).Store(address);
    }
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
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Abs(Vector256<float> value) => Vector256.Abs(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Divide(Vector256<float> a, Vector256<float> b) => a / b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> LoadInt32(int* address) => Vector256.ConvertToSingle(Vector256.Load(address));
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> RoundTripBFloat16(Vector256<float> value) => BFloat16Bits.RoundTrip(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static void StoreBFloat16(Vector256<float> value, ushort* address) => BFloat16Bits.Round(value).Store(address);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreRoundedSBytes(Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d, sbyte* address)
    {
        static Vector256<int> Code(Vector256<float> value) => Vector256.ConvertToInt32(Vector256.Round(value));
        var low = Vector256.Narrow(Code(a), Code(b));
        var high = Vector256.Narrow(Code(c), Code(d));
        Vector256.Narrow(low, high).Store(address);
    }
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
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Abs(Vector512<float> value) => Vector512.Abs(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Divide(Vector512<float> a, Vector512<float> b) => a / b;
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> LoadInt32(int* address) => Vector512.ConvertToSingle(Vector512.Load(address));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> RoundTripBFloat16(Vector512<float> value) => Vector512.Create(BFloat16Bits.RoundTrip(value.GetLower()), BFloat16Bits.RoundTrip(value.GetUpper()));
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreBFloat16(Vector512<float> value, ushort* address)
    {
        BFloat16Bits.Round(value.GetLower()).Store(address);
        BFloat16Bits.Round(value.GetUpper()).Store(address + 8);
    }
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void StoreRoundedSBytes(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d, sbyte* address)
    {
        static Vector512<int> Code(Vector512<float> value) => Vector512.ConvertToInt32(Vector512.Round(value));
        var low = Vector512.Narrow(Code(a), Code(b));
        var high = Vector512.Narrow(Code(c), Code(d));
        Vector512.Narrow(low, high).Store(address);
    }
}
