"""mrdl.layers block by block: each output's shape and one property checked against an independent
computation (float64 numpy or explicit loops), with explicit tolerances."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from mrdl.layers import (Attention, ChannelLayerNorm, ConvBNReLU, DoubleConv, DownBlock, PatchEmbedding,  # noqa: E402
                         PixelLevelAttention, Reconstruct, TokenConvBN, TransformerBlock, UpBlock)

ATOL = 1e-5  # float32 blocks against float64 references


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _randomise_norm(norm: nn.Module) -> None:
    """Give a BatchNorm non-trivial running statistics and affine parameters, so eval mode is not identity."""
    with torch.no_grad():
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.3, 0.3)


def _conv2d_by_hand(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, padding: int) -> np.ndarray:
    """Cross-correlation with stride 1 and zero padding, as explicit sums over the kernel window."""
    k = weight.shape[-1]
    padded = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    height, width = padded.shape[2] - k + 1, padded.shape[3] - k + 1
    out = np.zeros((x.shape[0], weight.shape[0], height, width))
    for i in range(k):
        for j in range(k):
            out += np.einsum("bchw,oc->bohw", padded[:, :, i:i + height, j:j + width], weight[:, :, i, j])
    return out if bias is None else out + bias[None, :, None, None]


def _bn_eval_by_hand(x: np.ndarray, norm: nn.Module, axis: int = 1) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = -1
    stats = [t.detach().double().numpy().reshape(shape) for t in (norm.running_mean, norm.running_var, norm.weight,
                                                                  norm.bias)]
    mean, var, weight, bias = stats
    return (x - mean) / np.sqrt(var + norm.eps) * weight + bias


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@pytest.mark.parametrize("kernel_size", [3, 1])
def test_conv_bn_relu_in_eval_equals_the_hand_computation(kernel_size):
    block = ConvBNReLU(3, 5, kernel_size=kernel_size)
    _randomise_norm(block[1])
    block.eval()
    x = torch.randn(2, 3, 7, 6)
    out = block(x)
    assert out.shape == (2, 5, 7, 6)  # "same" padding keeps the size
    conv = block[0]
    expected = np.maximum(_bn_eval_by_hand(_conv2d_by_hand(_np(x), _np(conv.weight), _np(conv.bias),
                                                           kernel_size // 2), block[1]), 0.0)
    np.testing.assert_allclose(_np(out), expected, atol=ATOL, rtol=1e-5)


def test_conv_bn_relu_in_training_normalises_each_channel_over_the_batch():
    block = ConvBNReLU(3, 4).train()
    x = 3.0 + 2.0 * torch.randn(8, 3, 10, 10)
    normalised = block[1](block[0](x))  # before the ReLU: batch statistics, weight 1, bias 0
    np.testing.assert_allclose(_np(normalised.mean((0, 2, 3))), 0.0, atol=1e-5)
    np.testing.assert_allclose(_np(normalised.var((0, 2, 3), unbiased=False)), 1.0, atol=1e-3)
    out = block(x)
    assert (out >= 0).all()
    np.testing.assert_array_equal(_np(out), np.maximum(_np(normalised), 0.0))
    zero_fraction = (out == 0).double().mean().item()
    assert 0.3 < zero_fraction < 0.7  # zero-mean unit-variance channels: about half are cut by the ReLU


def test_double_conv_and_down_block():
    double = DoubleConv(3, 6).eval()
    assert [type(m) for m in double] == [ConvBNReLU, ConvBNReLU]
    x = torch.randn(2, 3, 8, 10)
    assert double(x).shape == (2, 6, 8, 10)
    np.testing.assert_allclose(_np(double(x)), _np(double[1](double[0](x))), atol=0)

    down = DownBlock(3, 6).eval()
    out = down(x)
    assert out.shape == (2, 6, 4, 5)  # halves the resolution
    pooled = _np(x).reshape(2, 3, 4, 2, 5, 2).max(axis=(3, 5))  # 2x2 max pooling by hand
    np.testing.assert_allclose(_np(out), _np(down[1](torch.from_numpy(pooled).float())), atol=ATOL)


def test_patch_embedding_is_a_linear_map_of_each_patch_plus_its_position():
    embed = PatchEmbedding(channels=4, patch_size=2, num_tokens=12)
    x = torch.randn(2, 4, 6, 8)  # 3 x 4 patches of 2 x 2
    out = embed(x)
    assert out.shape == (2, 12, 4)
    patches = _np(x).reshape(2, 4, 3, 2, 4, 2).transpose(0, 2, 4, 1, 3, 5).reshape(2, 12, 4 * 2 * 2)  # row-major
    weight = _np(embed.proj.weight).reshape(4, -1)  # (C_out, C_in * p * p)
    expected = patches @ weight.T + _np(embed.proj.bias) + _np(embed.position)
    np.testing.assert_allclose(_np(out), expected, atol=ATOL, rtol=1e-5)
    assert 0 < embed.position.std().item() < 0.05  # trunc_normal(std=0.02), not zeros


def test_token_conv_bn_convolves_along_the_token_axis():
    block = TokenConvBN(5, 3)
    _randomise_norm(block.norm)
    block.eval()
    tokens = torch.randn(2, 9, 5)  # (B, N, C_in)
    out = block(tokens)
    assert out.shape == (2, 9, 3) and (out >= 0).all()
    padded = np.pad(_np(tokens), ((0, 0), (1, 1), (0, 0)))
    weight = _np(block.conv.weight)  # (C_out, C_in, 3)
    conv = sum(np.einsum("bnc,oc->bno", padded[:, j:j + 9], weight[:, :, j]) for j in range(3)) + _np(block.conv.bias)
    expected = np.maximum(_bn_eval_by_hand(conv, block.norm, axis=2), 0.0)
    np.testing.assert_allclose(_np(out), expected, atol=ATOL, rtol=1e-5)


def _attention_by_hand(x: np.ndarray, attention: Attention) -> np.ndarray:
    batch, tokens, dim = x.shape
    heads, head_dim = attention.heads, dim // attention.heads
    qkv = x @ _np(attention.qkv.weight).T + _np(attention.qkv.bias)  # (B, N, 3 dim): [q | k | v], heads inside each
    out = np.zeros_like(x)
    for h in range(heads):
        part = slice(h * head_dim, (h + 1) * head_dim)
        q, k, v = (qkv[:, :, i * dim:(i + 1) * dim][:, :, part] for i in range(3))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[:, :, part] = (weights / weights.sum(-1, keepdims=True)) @ v
    return out @ _np(attention.proj.weight).T + _np(attention.proj.bias)


def test_attention_equals_softmax_qk_v_per_head():
    attention = Attention(8, heads=2)
    x = torch.randn(2, 5, 8)
    out = attention(x)
    assert out.shape == (2, 5, 8)
    np.testing.assert_allclose(_np(out), _attention_by_hand(_np(x), attention), atol=ATOL, rtol=1e-5)
    order = torch.randperm(5)
    np.testing.assert_allclose(_np(attention(x[:, order])), _np(out[:, order]), atol=ATOL)  # permutation equivariant


def test_transformer_block_is_pre_ln_residual():
    block = TransformerBlock(8, heads=2, mlp_ratio=2.0)
    assert block.mlp[0].out_features == 16
    x = torch.randn(2, 5, 8)
    assert block(x).shape == (2, 5, 8)
    with torch.no_grad():  # silence both branches' last linear maps: the block is the identity
        for linear in (block.attn.proj, block.mlp[2]):
            linear.weight.zero_()
            linear.bias.zero_()
    np.testing.assert_array_equal(_np(block(x)), _np(x))
    with torch.no_grad():  # only the attention branch: x + Attn(LN(x)), the LayerNorm by hand
        block.attn.proj.weight.normal_()
        xs = _np(x)
        normed = (xs - xs.mean(-1, keepdims=True)) / np.sqrt(xs.var(-1, keepdims=True) + block.norm1.eps)
        expected = xs + _attention_by_hand(normed, block.attn)
    np.testing.assert_allclose(_np(block(x)), expected, atol=1e-4, rtol=1e-5)


def test_reconstruct_puts_tokens_back_on_the_grid_and_upsamples_nearest():
    block = Reconstruct(4, scale=2)
    _randomise_norm(block.norm)
    block.eval()
    tokens = torch.randn(2, 9, 4)  # a 3 x 3 grid
    out = block(tokens)
    assert out.shape == (2, 4, 6, 6) and (out >= 0).all()
    grid = _np(tokens).reshape(2, 3, 3, 4).transpose(0, 3, 1, 2)  # token n = row * 3 + column
    upsampled = grid.repeat(2, axis=2).repeat(2, axis=3)
    conv = np.einsum("bchw,oc->bohw", upsampled, _np(block.conv.weight)[:, :, 0, 0]) + _np(block.conv.bias)[:, None,
                                                                                                            None]
    np.testing.assert_allclose(_np(out), np.maximum(_bn_eval_by_hand(conv, block.norm), 0.0), atol=ATOL, rtol=1e-5)


def test_channel_layer_norm_normalises_each_pixel_over_channels():
    norm = ChannelLayerNorm(6)
    x = 5.0 + 3.0 * torch.randn(2, 6, 4, 5)
    out = _np(norm(x))
    np.testing.assert_allclose(out.mean(1), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.var(1), 1.0, atol=1e-4)
    with torch.no_grad():
        norm.norm.weight.copy_(torch.arange(1.0, 7.0))
        norm.norm.bias.fill_(0.5)
    xs = _np(x)
    expected = (xs - xs.mean(1, keepdims=True)) / np.sqrt(xs.var(1, keepdims=True) + 1e-6)
    expected = expected * np.arange(1.0, 7.0)[None, :, None, None] + 0.5
    np.testing.assert_allclose(_np(norm(x)), expected, atol=1e-4, rtol=1e-5)


def _plam_weight_by_hand(skip: np.ndarray, plam: PixelLevelAttention) -> np.ndarray:
    """[mean_c relu(W1 x), max_c relu(W2 x), their sum] -> Linear(3, 6) -> ReLU -> Linear(6, 1): (B, H, W)."""
    mean_map = np.maximum(np.einsum("bchw,oc->bohw", skip, _np(plam.mean_branch.weight)[:, :, 0, 0]), 0).mean(1)
    max_map = np.maximum(np.einsum("bchw,oc->bohw", skip, _np(plam.max_branch.weight)[:, :, 0, 0]), 0).max(1)
    features = np.stack([mean_map, max_map, mean_map + max_map], axis=-1)  # (B, H, W, 3)
    hidden = np.maximum(features @ _np(plam.mlp[0].weight).T + _np(plam.mlp[0].bias), 0)
    return (hidden @ _np(plam.mlp[2].weight).T + _np(plam.mlp[2].bias))[..., 0]


def test_pixel_level_attention_scales_every_channel_of_a_pixel_by_one_weight():
    plam = PixelLevelAttention(6)
    assert plam.mean_branch.bias is None and plam.max_branch.bias is None
    skip = torch.randn(2, 6, 5, 7)
    out = plam(skip)
    assert out.shape == skip.shape
    weight = _plam_weight_by_hand(_np(skip), plam)
    np.testing.assert_allclose(_np(out), _np(skip) * weight[:, None], atol=ATOL, rtol=1e-5)
    assert np.ptp(weight) > 1e-3  # the weight really varies per pixel
    assert (plam(torch.zeros(1, 6, 3, 3)) == 0).all()


def test_up_block_doubles_the_size_and_attends_to_the_skip():
    block = UpBlock(8, 5).eval()
    x, skip = torch.randn(2, 4, 3, 4), torch.randn(2, 4, 6, 8)  # in_channels = channels(x) + channels(skip)
    out = block(x, skip)
    assert out.shape == (2, 5, 6, 8)
    up = torch.from_numpy(_np(x).repeat(2, axis=2).repeat(2, axis=3)).float()  # nearest x2 by hand
    attended = skip * torch.from_numpy(_plam_weight_by_hand(_np(skip), block.attention)[:, None]).float()
    np.testing.assert_allclose(_np(out), _np(block.conv(torch.cat([attended, up], dim=1))), atol=1e-4, rtol=1e-4)
