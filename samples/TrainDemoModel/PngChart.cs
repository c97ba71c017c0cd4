using System.Buffers.Binary;
using System.IO.Compression;

namespace TrainDemoModel;

/// <summary>
/// Draws the loss curve as a PNG with no imaging library: an RGB raster, a 5×7 bitmap font for the axis labels, and the
/// PNG container written by hand (zlib-compressed scanlines, CRC-32 per chunk).
/// </summary>
internal static class PngChart
{
    private const int Width = 800, Height = 480, Left = 70, Right = 20, Top = 40, Bottom = 50;

    public static void WriteLossCurve(string path, IReadOnlyList<(int Step, double Loss)> points, string title)
    {
        var image = new Raster(Width, Height);
        image.Fill(0, 0, Width, Height, (255, 255, 255));
        if (points.Count == 0) throw new ArgumentException("no loss values to plot.", nameof(points));
        int maxStep = points[^1].Step;
        double minLoss = Math.Floor(points.Min(p => p.Loss)), maxLoss = Math.Ceiling(points.Max(p => p.Loss));
        int plotWidth = Width - Left - Right, plotHeight = Height - Top - Bottom;
        int X(double step) => Left + (int)Math.Round(step / Math.Max(1, maxStep) * plotWidth);
        int Y(double loss) => Top + (int)Math.Round((maxLoss - loss) / Math.Max(1e-9, maxLoss - minLoss) * plotHeight);

        for (double loss = minLoss; loss <= maxLoss + 1e-9; loss += 1)
        {
            image.Line(Left, Y(loss), Width - Right, Y(loss), (225, 225, 225));
            image.Text(Left - 8 - 6 * $"{loss:0}".Length, Y(loss) - 3, $"{loss:0}", (60, 60, 60));
        }
        int stepTick = NiceStep(maxStep / 8.0);
        for (int step = 0; step <= maxStep; step += stepTick)
        {
            image.Line(X(step), Top, X(step), Height - Bottom, (225, 225, 225));
            image.Text(X(step) - 3 * $"{step}".Length, Height - Bottom + 8, $"{step}", (60, 60, 60));
        }
        image.Line(Left, Top, Left, Height - Bottom, (0, 0, 0));
        image.Line(Left, Height - Bottom, Width - Right, Height - Bottom, (0, 0, 0));

        for (int i = 1; i < points.Count; i++)
            image.Line(X(points[i - 1].Step), Y(points[i - 1].Loss), X(points[i].Step), Y(points[i].Loss), (170, 190, 230));
        double smoothed = points[0].Loss;
        (int X, int Y) previous = (X(points[0].Step), Y(smoothed));
        foreach (var (step, loss) in points)
        {
            smoothed = 0.95 * smoothed + 0.05 * loss;
            var current = (X(step), Y(smoothed));
            image.Line(previous.X, previous.Y, current.Item1, current.Item2, (20, 60, 200));
            image.Line(previous.X, previous.Y + 1, current.Item1, current.Item2 + 1, (20, 60, 200));
            previous = current;
        }
        image.Text(Left, 14, title, (0, 0, 0));
        image.Text(Width / 2 - 12, Height - 18, "step", (0, 0, 0));
        image.Text(8, Top - 14, "loss", (0, 0, 0));
        File.WriteAllBytes(path, image.ToPng());
    }

    private static int NiceStep(double raw)
    {
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(Math.Max(1, raw))));
        foreach (var factor in new[] { 1, 2, 5, 10 })
            if (factor * magnitude >= raw) return (int)(factor * magnitude);
        return (int)(10 * magnitude);
    }

    private sealed class Raster(int width, int height)
    {
        private readonly byte[] pixels = new byte[width * height * 3];

        public void Fill(int x0, int y0, int w, int h, (byte R, byte G, byte B) color)
        {
            for (int y = y0; y < y0 + h; y++)
                for (int x = x0; x < x0 + w; x++) Set(x, y, color);
        }

        public void Set(int x, int y, (byte R, byte G, byte B) color)
        {
            if ((uint)x >= (uint)width || (uint)y >= (uint)height) return;
            int i = (y * width + x) * 3;
            (pixels[i], pixels[i + 1], pixels[i + 2]) = color;
        }

        /// <summary>Bresenham's line.</summary>
        public void Line(int x0, int y0, int x1, int y1, (byte, byte, byte) color)
        {
            int dx = Math.Abs(x1 - x0), dy = -Math.Abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, error = dx + dy;
            while (true)
            {
                Set(x0, y0, color);
                if (x0 == x1 && y0 == y1) return;
                int e2 = 2 * error;
                if (e2 >= dy) { error += dy; x0 += sx; }
                if (e2 <= dx) { error += dx; y0 += sy; }
            }
        }

        public void Text(int x, int y, string text, (byte, byte, byte) color)
        {
            foreach (var c in text.ToLowerInvariant())
            {
                if (Font.TryGetValue(c, out var rows))
                    for (int row = 0; row < 7; row++)
                        for (int column = 0; column < 5; column++)
                            if ((rows[row] >> (4 - column) & 1) == 1) Set(x + column, y + row, color);
                x += 6;
            }
        }

        public byte[] ToPng()
        {
            using var output = new MemoryStream();
            output.Write([0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A]);
            var header = new byte[13];
            BinaryPrimitives.WriteInt32BigEndian(header, width);
            BinaryPrimitives.WriteInt32BigEndian(header.AsSpan(4), height);
            header[8] = 8;  // bit depth
            header[9] = 2;  // colour type RGB
            Chunk(output, "IHDR", header);
            using var raw = new MemoryStream();
            using (var zlib = new ZLibStream(raw, CompressionLevel.SmallestSize, leaveOpen: true))
                for (int y = 0; y < height; y++)
                {
                    zlib.WriteByte(0);  // filter: none
                    zlib.Write(pixels, y * width * 3, width * 3);
                }
            Chunk(output, "IDAT", raw.ToArray());
            Chunk(output, "IEND", []);
            return output.ToArray();
        }

        private static void Chunk(Stream output, string type, byte[] data)
        {
            Span<byte> number = stackalloc byte[4];
            BinaryPrimitives.WriteInt32BigEndian(number, data.Length);
            output.Write(number);
            var typed = System.Text.Encoding.ASCII.GetBytes(type).Concat(data).ToArray();
            output.Write(typed);
            BinaryPrimitives.WriteUInt32BigEndian(number, Crc32(typed));
            output.Write(number);
        }

        private static uint Crc32(byte[] data)
        {
            uint crc = 0xFFFFFFFF;
            foreach (var b in data)
            {
                crc ^= b;
                for (int k = 0; k < 8; k++) crc = (crc & 1) != 0 ? 0xEDB88320 ^ (crc >> 1) : crc >> 1;
            }
            return ~crc;
        }
    }

    /// <summary>5×7 glyphs (one byte per row, low five bits) for the characters the chart prints.</summary>
    private static readonly Dictionary<char, byte[]> Font = new()
    {
        ['0'] = [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        ['1'] = [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        ['2'] = [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        ['3'] = [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        ['4'] = [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        ['5'] = [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        ['6'] = [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        ['7'] = [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        ['8'] = [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        ['9'] = [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ['.'] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        [','] = [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ['-'] = [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        ['('] = [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        [')'] = [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        [':'] = [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        ['a'] = [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        ['b'] = [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        ['c'] = [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        ['d'] = [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        ['e'] = [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        ['f'] = [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        ['g'] = [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        ['h'] = [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        ['i'] = [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        ['k'] = [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        ['l'] = [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        ['m'] = [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        ['n'] = [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        ['o'] = [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        ['p'] = [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        ['r'] = [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        ['s'] = [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
        ['t'] = [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        ['u'] = [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        ['v'] = [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        ['w'] = [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        ['x'] = [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        ['y'] = [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        ['z'] = [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
    };
}
