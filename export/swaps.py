"""Export-time module replacements: modules that compute the same function as a model's own, in ops
that the deployment runtimes run better (the training model and its checkpoints are never changed).

* :class:`ConvTransposeAsConv`: a ``ConvTranspose2d`` whose kernel equals its stride (no padding,
  dilation or groups; Enc_P2's 2x2 stride-2 upsampling) as a 1x1 ``Conv`` to ``k*k`` times the
  channels and a rearrangement of those channels into the k x k neighbourhood of each pixel. Each
  output pixel of such a transposed convolution reads exactly one input pixel:
  y[n, o, k*h + a, k*w + b] = sum_c x[n, c, h, w] W[c, o, a, b] + bias[o], which is the 1x1 conv
  with weight W'[(a*k + b)*C_out + o, c] = W[c, o, a, b] (bias tiled k*k times), its output
  rearranged. ONNX Runtime has no integer ConvTranspose (it stays float in an INT8 model); the 1x1
  Conv quantizes to a QLinearConv.

  The rearrangement is written channels-last (Transpose to NHWC, Reshape to (B*H, W, k, k*C),
  Transpose of the two middle axes, Reshape, Transpose back) rather than as ``PixelShuffle``
  (ONNX ``DepthToSpace``), which is a float element-by-element shuffle (with it the INT8 model was
  slower than with the ConvTranspose). ONNX Runtime runs its QLinearConv channels-last and cancels
  the Transposes against its own layout changes and against the channel LayerNorm's, leaving one
  uint8 Transpose that moves whole channel vectors. That Transpose is 4-D (batch and rows merged):
  OpenVINO has no fast kernel for the 6-D form of it, which ran our INT8 file 8% slower there than
  the ConvTranspose graph, against 5% with the 4-D form, at the same ONNX Runtime speed
  (docs/measurements.md, "Float islands in ONNX Runtime INT8").
* :class:`ReconstructConvFirst`: P_CM's ``Reconstruct`` (tokens -> grid -> nearest upsample -> 1x1 conv ->
  BatchNorm -> ReLU) with the upsample last. A 1x1 conv, an eval-mode BatchNorm and a ReLU act on each
  pixel alone, and a nearest upsample only copies pixels, so they commute: each output pixel gets the
  values it had before, computed once per token instead of ``scale**2`` times (the same arithmetic on the
  same inputs, so the same float values). Not done in training: BatchNorm's batch statistics would count
  each token once instead of ``scale**2`` times.
* :class:`PixelAttentionAsConv`: PLAM's per-pixel MLP (``Linear(3, 6)``, ReLU, ``Linear(6, 1)`` applied to the
  channels-last map) as two 1x1 convs on the channels-first map. ONNX Runtime ran the Linear layers as
  ``MatMul`` + broadcast ``Add`` of the bias, and its integer broadcast add of a 6-vector over every pixel
  of a 224x224 map is a slow single-threaded loop; a 1x1 conv carries its bias, and the two permutes go.

For the ONNX Runtime INT8 model only (:func:`swap_for_int8`; the export quantizes a second FP32 graph with it):

* :class:`NearestAsGather`: a nearest upsample by an integer factor as two row and column ``Gather``s of the
  channels-last map. ONNX Runtime's uint8 ``Resize`` is a single-threaded per-element loop (its four
  224x224 ones took 11 % of the INT8 model's time on 2 threads); a ``Gather`` copies whole channel vectors
  and rows, and the permutes cancel against ONNX Runtime's channels-last integer convolutions. In float
  the ``Resize`` is faster (ONNX Runtime 3 %, OpenVINO 7 %), so ``model.onnx`` keeps it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from mrdl.layers import PixelLevelAttention, Reconstruct, token_grid


def is_one_tap_transpose(module: nn.Module) -> bool:
    """True for a ``ConvTranspose2d`` with kernel == stride (each output pixel reads one input pixel, through one
    kernel tap), which :class:`ConvTransposeAsConv` computes exactly."""
    if not isinstance(module, nn.ConvTranspose2d):
        return False
    k = module.kernel_size
    return (k[0] == k[1] and tuple(module.stride) == tuple(k) and tuple(module.padding) == (0, 0)
            and tuple(module.output_padding) == (0, 0) and tuple(module.dilation) == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


class ConvTransposeAsConv(nn.Module):
    """``ConvTranspose2d(C_in, C_out, k, stride=k)`` as ``Conv2d(C_in, k*k*C_out, 1)`` and a channels-last
    rearrangement of its output (see the module docstring)."""

    def __init__(self, transpose: nn.ConvTranspose2d) -> None:
        super().__init__()
        if not is_one_tap_transpose(transpose):
            raise ValueError(f"ConvTransposeAsConv needs a ConvTranspose2d with kernel == stride, no padding, "
                             f"dilation 1 and groups 1; got {transpose}")
        self.k = k = transpose.kernel_size[0]
        weight = transpose.weight.detach()  # (C_in, C_out, k, k)
        c_in, self.c_out = weight.shape[0], weight.shape[1]
        self.conv = nn.Conv2d(c_in, k * k * self.c_out, kernel_size=1, bias=transpose.bias is not None,
                              device=weight.device, dtype=weight.dtype)
        with torch.no_grad():  # output channel (a*k + b)*C_out + o holds kernel tap (a, b) of channel o
            self.conv.weight.copy_(weight.permute(2, 3, 1, 0).reshape(k * k * self.c_out, c_in, 1, 1))
            if transpose.bias is not None:
                self.conv.bias.copy_(transpose.bias.detach().repeat(k * k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        k, c_out = self.k, self.c_out
        taps = self.conv(x).permute(0, 2, 3, 1)  # (B, H, W, k*k*C_out): channel (a*k + b)*C_out + o
        taps = taps.reshape(batch * height, width, k, k * c_out).permute(0, 2, 1, 3)  # (B*H, a, W, (b, o))
        return taps.reshape(batch, height * k, width * k, c_out).permute(0, 3, 1, 2)  # (B, C_out, kH, kW)


def _replace(module: nn.Module, matches, replacement) -> list[str]:
    """Replace, in place, every submodule of ``module`` for which ``matches`` is true by ``replacement(it)``;
    return the replaced modules' names."""
    targets = [name for name, child in module.named_modules() if matches(child)]
    for name in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, replacement(getattr(parent, attribute)))
    return targets


def _apply(module: nn.Module, swaps) -> list[str]:
    """Every ``(matches, replacement, what)`` of ``swaps`` on ``module`` in place: ``"name: what"`` per module."""
    return [f"{name}: {what}" for matches, replacement, what in swaps for name in _replace(module, matches, replacement)]


class ReconstructConvFirst(nn.Module):
    """:class:`mrdl.layers.Reconstruct` with its 1x1 conv, BatchNorm and ReLU before the nearest upsample (the
    same function in eval mode; see the module docstring). Keeps the original's ``conv`` and ``norm``."""

    def __init__(self, reconstruct: Reconstruct) -> None:
        super().__init__()
        self.upsample, self.conv, self.norm = reconstruct.upsample, reconstruct.conv, reconstruct.norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # contiguous: the grid is a channels-last view, and torch.export tells a channels-last batch of one from
        # a batch of many only by a guard on the batch size (the dynamic batch would then fail to export)
        x = token_grid(tokens).contiguous()
        return self.upsample(F.relu(self.norm(self.conv(x))))


def _linear_as_conv(linear: nn.Linear) -> nn.Conv2d:
    conv = nn.Conv2d(linear.in_features, linear.out_features, kernel_size=1, bias=linear.bias is not None,
                     device=linear.weight.device, dtype=linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.detach()[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias.detach())
    return conv


class PixelAttentionAsConv(nn.Module):
    """:class:`mrdl.layers.PixelLevelAttention` with its per-pixel MLP as 1x1 convs on the channels-first map
    (the same function; see the module docstring)."""

    def __init__(self, attention: PixelLevelAttention) -> None:
        super().__init__()
        first, activation, second = attention.mlp
        if not (isinstance(first, nn.Linear) and isinstance(activation, nn.ReLU) and isinstance(second, nn.Linear)):
            raise ValueError(f"PixelAttentionAsConv needs PLAM's Linear, ReLU, Linear MLP; got {attention.mlp}")
        self.mean_branch, self.max_branch = attention.mean_branch, attention.max_branch
        self.mlp = nn.Sequential(_linear_as_conv(first), nn.ReLU(), _linear_as_conv(second))

    maps = PixelLevelAttention.maps  # the same [mean, max, mean + max] from the same branches

    def forward(self, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.mlp(self.maps(skip))  # the weight map (B, 1, H, W)


SWAPS = (  # (what is replaced, the replacement, how the report names it)
    (is_one_tap_transpose, ConvTransposeAsConv, "ConvTranspose2d -> 1x1 Conv + channels-last rearrangement"),
    (lambda module: type(module) is Reconstruct, ReconstructConvFirst,
     "Reconstruct: 1x1 Conv, BatchNorm, ReLU before the nearest upsample"),
    (lambda module: type(module) is PixelLevelAttention, PixelAttentionAsConv,
     "PixelLevelAttention: per-pixel MLP as 1x1 Conv layers"),
)


def swap_for_deploy(module: nn.Module) -> list[str]:
    """Apply every swap of :data:`SWAPS` to ``module`` in place (an eval-mode copy: the swaps keep the function
    in eval mode only); return ``"name: what"`` for each module replaced."""
    return _apply(module, SWAPS)


def is_nearest_upsample(module: nn.Module) -> bool:
    """True for an ``nn.Upsample`` in nearest mode by one integer factor on both axes (no size given)."""
    if not isinstance(module, nn.Upsample) or module.mode != "nearest" or module.size is not None:
        return False
    factors = module.scale_factor if isinstance(module.scale_factor, tuple) else (module.scale_factor,) * 2
    return len(factors) == 2 and factors[0] == factors[1] and float(factors[0]).is_integer() and factors[0] >= 1


class NearestAsGather(nn.Module):
    """A nearest upsample by an integer factor as row and column ``Gather``s of the channels-last map."""

    def __init__(self, upsample: nn.Upsample) -> None:
        super().__init__()
        if not is_nearest_upsample(upsample):
            raise ValueError(f"NearestAsGather needs a nearest nn.Upsample by one integer factor; got {upsample}")
        factor = upsample.scale_factor
        self.scale = int(factor[0] if isinstance(factor, tuple) else factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, height, width = x.shape
        rows = torch.arange(height * self.scale, device=x.device) // self.scale  # output row -> input row
        columns = torch.arange(width * self.scale, device=x.device) // self.scale
        channels_last = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        return channels_last.index_select(1, rows).index_select(2, columns).permute(0, 3, 1, 2)


INT8_SWAPS = (
    (is_nearest_upsample, NearestAsGather, "nearest Upsample -> channels-last row and column Gather"),
)


def swap_for_int8(module: nn.Module) -> list[str]:
    """Apply :data:`INT8_SWAPS` to ``module`` (a deploy module, already through :func:`swap_for_deploy`) in
    place; return ``"name: what"`` for each module replaced."""
    return _apply(module, INT8_SWAPS)
