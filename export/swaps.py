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
"""

from __future__ import annotations

import torch
from torch import nn


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


def swap_conv_transposes(module: nn.Module) -> list[str]:
    """Replace, in place, every ``ConvTranspose2d`` in ``module`` that :class:`ConvTransposeAsConv` computes
    exactly; return the replaced modules' names. Others stay as they are."""
    targets = [name for name, child in module.named_modules() if is_one_tap_transpose(child)]
    for name in targets:
        parent_name, _, attribute = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, attribute, ConvTransposeAsConv(getattr(parent, attribute)))
    return targets
