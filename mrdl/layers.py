"""Small building blocks shared by the encoder, the cross-modality processor and the decoder.

Most follow LViT (Li et al., IEEE TMI 2023), whose CNN/ViT U-shape MRDL reuses.
Shape comments: B batch, C channels, N tokens, H/W spatial size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ConvBNReLU(nn.Sequential):
    """conv3x3 (or k x k) -> BatchNorm2d -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class DoubleConv(nn.Sequential):
    """Two ConvBNReLU, the body of every encoder and decoder block."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class DownBlock(nn.Sequential):
    """maxpool2 -> DoubleConv: halves the resolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> tokens plus a learned position embedding: (B,C,H,W) -> (B,N,C)."""

    def __init__(self, *, channels: int, patch_size: int, num_tokens: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, channels, kernel_size=patch_size, stride=patch_size)
        self.position = nn.Parameter(torch.zeros(1, num_tokens, channels))
        nn.init.trunc_normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C)
        return x + self.position


class TokenConvBN(nn.Module):
    """Conv1d(k=3) over the token sequence changing the channel count, BatchNorm1d, ReLU.

    LViT's ``ConvTransBN``: (B,N,C_in) -> (B,N,C_out).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens.transpose(1, 2)  # (B, C_in, N)
        x = F.relu(self.norm(self.conv(x)))
        return x.transpose(1, 2)  # (B, N, C_out)


class Attention(nn.Module):
    """Multi-head self-attention with a qkv bias."""

    def __init__(self, dim: int, *, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)); x + MLP(LN(x)) with GELU."""

    def __init__(self, dim: int, *, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads=heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def token_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, C) tokens of a square grid -> the (B, C, h, w) map, h = w = sqrt(N)."""
    batch, num_tokens, channels = tokens.shape
    side = int(round(num_tokens**0.5))
    return tokens.transpose(1, 2).reshape(batch, channels, side, side)


class Reconstruct(nn.Module):
    """Tokens back to a feature map: (B,N,C) -> grid -> nearest upsample -> conv1x1-BN-ReLU."""

    def __init__(self, channels: int, *, scale: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=scale, mode="nearest")  # a module: the export may swap it
        self.conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(self.upsample(token_grid(tokens)))))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B,C,H,W) map."""

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PixelLevelAttention(nn.Module):
    """LViT's pixel-level attention module (PLAM) on a skip connection.

    Two conv1x1 (no bias) + ReLU branches reduced over channels, one by mean, one by max;
    [mean, max, mean + max] pass a per-pixel MLP 3 -> 6 -> 1 and the result scales the skip.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.mean_branch = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.max_branch = nn.Conv2d(channels, channels, kernel_size=1, bias=False)
        self.mlp = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=True), nn.Linear(6, 1))

    def maps(self, skip: torch.Tensor) -> torch.Tensor:
        """The MLP's per-pixel input [mean, max, mean + max], (B, 3, H, W)."""
        mean_map = F.relu(self.mean_branch(skip)).mean(dim=1, keepdim=True)  # (B, 1, H, W)
        max_map = F.relu(self.max_branch(skip)).amax(dim=1, keepdim=True)  # (B, 1, H, W)
        return torch.cat([mean_map, max_map, mean_map + max_map], dim=1)

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        weight = self.mlp(self.maps(skip).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # (B, 1, H, W)
        return skip * weight


class UpBlock(nn.Module):
    """Nearest upsample x2, PLAM on the skip, concat [skip, up], DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")  # a module: the export may swap it
        self.attention = PixelLevelAttention(in_channels // 2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.attention(skip), self.upsample(x)], dim=1))
