using TorchSharp;

namespace Rinna.Net.Tokenization;

/// <summary>Padded token ids and attention masks of a batch, as Hugging Face's <c>BatchEncoding</c> holds them.</summary>
public sealed class BatchEncoding
{
    internal BatchEncoding(long[,] inputIds, long[,] attentionMask)
    {
        InputIds = inputIds;
        AttentionMask = attentionMask;
    }

    /// <summary>Token ids, shape [batch, length]; padding positions hold the pad token id.</summary>
    public long[,] InputIds { get; }

    /// <summary>1 for real tokens, 0 for padding, shape [batch, length].</summary>
    public long[,] AttentionMask { get; }

    /// <summary>Number of sequences.</summary>
    public int BatchSize => InputIds.GetLength(0);

    /// <summary>Padded length of every sequence.</summary>
    public int SequenceLength => InputIds.GetLength(1);

    /// <summary>The ids as an int64 tensor of shape [batch, length] (<c>return_tensors="pt"</c>).</summary>
    /// <param name="device">Where to place the tensor; <c>null</c> means the CPU.</param>
    public torch.Tensor InputIdsTensor(torch.Device? device = null) => ToTensor(InputIds, device);

    /// <summary>The attention mask as an int64 tensor of shape [batch, length].</summary>
    /// <param name="device">Where to place the tensor; <c>null</c> means the CPU.</param>
    public torch.Tensor AttentionMaskTensor(torch.Device? device = null) => ToTensor(AttentionMask, device);

    private static torch.Tensor ToTensor(long[,] values, torch.Device? device) => torch.tensor(values, device: device);
}
