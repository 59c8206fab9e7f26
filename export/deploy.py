"""The deploy module: an MRDL checkpoint reduced to what inference needs.

In eval mode under ``fusion="distribution"`` the fused feature F = mu_r (the mean of the
learnable features F_L over K) does not depend on the input. Everything computed from F alone
is therefore a constant and is folded here:

* F = mu_r                           (N, C)
* y1 = P_CM down block 1 (F)         (N, C)
* y1' = P_CM up block 1 (y1)         (N, C)

The vision embedding F_V, the text projection ConvB and the KL term only feed L_KL, a
training-time loss, so they are dropped; the graph has one input, the image. Under
``fusion="addition"`` F = F_V + F_T depends on both inputs, nothing is folded, ConvB stays, and
the graph takes the precomputed text features as a second input.

The activation (sigmoid for one class, softmax for several) is applied in the graph, so the
output is ``probabilities`` as the deploy manifest states.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from mrdl.distribution import fused_feature
from mrdl.losses import probabilities
from mrdl.model import MRDL, SegmentationPath


@dataclass
class FoldReport:
    """What :func:`build_deploy_module` folded away and what that saves."""

    folded: list[str] = field(default_factory=list)  # human-readable names of folded sub-graphs
    replaced: list[str] = field(default_factory=list)  # modules swapped for an equivalent (mrdl_export.swaps)
    int8_replaced: list[str] = field(default_factory=list)  # swapped in the graph the INT8 model is quantized from
    dropped: list[str] = field(default_factory=list)  # modules that no longer run at inference
    flops_full: int = 0  # one image through MRDL.forward in eval mode (image only)
    flops_full_with_text: int = 0  # the same with text features (ConvB + L_KL computed too)
    flops_deploy: int = 0  # one image through the deploy module

    @property
    def flops_saved(self) -> int:
        return self.flops_full - self.flops_deploy

    def to_dict(self) -> dict:
        return {"folded": self.folded, "dropped": self.dropped, "replaced": self.replaced, "int8_replaced": self.int8_replaced,
                "flops_full": self.flops_full, "flops_full_with_text": self.flops_full_with_text,
                "flops_deploy": self.flops_deploy, "flops_saved": self.flops_saved}


class DeployModule(SegmentationPath, nn.Module):
    """MRDL inference graph: image [+ text features] -> probabilities (B, n_classes, H, W).

    Holds the model's inference parts under their own names (so the exported graph's name scopes
    read ``decoder``, ``vision_encoder``, ...) and runs the model's own :meth:`SegmentationPath.segment`.
    """

    def __init__(self, model: MRDL) -> None:
        super().__init__()
        if model.config.model.phase != "matmul":
            raise ValueError("the deploy module needs the export-safe 'matmul' phase; load the checkpoint "
                             "with phase='matmul'")
        model = model.eval()
        self.fusion = model.config.model.fusion
        self.vision_encoder = model.vision_encoder
        self.cross_modality = model.cross_modality
        self.frequency_prompt = model.frequency_prompt
        self.decoder = model.decoder
        if self.fusion == "distribution":
            with torch.no_grad():
                fused = fused_feature(model.learnable_features, batch=1, sample=False,
                                      eps=model.config.model.variance_eps)  # F = mu_r: (1, N, C)
                y1 = self.cross_modality.first_level(fused)  # (1, N, C)
                y1_up = self.cross_modality.up_blocks[0](y1)  # (1, N, C)
            self.register_buffer("y1", y1.detach().clone())
            self.register_buffer("y1_up", y1_up.detach().clone())
        else:
            self.vision_embedding = model.vision_embedding
            self.text_projection = model.text_projection

    def forward(self, image: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        features = self.vision_encoder(image)  # x1..x5
        batch = image.shape[0]
        if self.fusion == "distribution":
            y1 = self.y1.expand(batch, -1, -1)  # (B, N, C) constant
            y1_up = self.y1_up.expand(batch, -1, -1)  # (B, N, C) constant
        else:
            fused = self.vision_embedding(features[0]) + self.text_projection(text_features)  # (B, N, C)
            y1 = self.cross_modality.first_level(fused)
            y1_up = None
        logits = self.segment(image, features, y1, y1_up)
        return probabilities(logits)  # sigmoid for one class, softmax over classes otherwise


def example_inputs(model: MRDL, *, batch: int = 1) -> tuple[torch.Tensor, ...]:
    """Inputs the deploy module takes: (image,) or (image, text_features) under addition."""
    cfg = model.config.model
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=generator)
    if cfg.fusion == "addition":
        text = torch.randn(batch, cfg.text.context_length, cfg.text.width, generator=generator)
        return image, text
    return (image,)


def count_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    """FLOPs of one forward pass, counted by torch's FlopCounterMode (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def build_deploy_module(model: MRDL) -> tuple[DeployModule, FoldReport]:
    """The deploy module of ``model`` (matmul phase) and a report of what was folded and replaced.

    Some modules are computed in ops the runtimes run better (:mod:`mrdl_export.swaps`: the same function
    in eval mode, e.g. an integer kernel in ONNX Runtime INT8 for a transposed convolution).
    """
    from .swaps import swap_for_deploy

    model = model.eval()
    deploy = DeployModule(copy.deepcopy(model)).eval()  # own weights: the parity reference stays untouched
    cfg = model.config.model
    report = FoldReport()
    report.replaced = swap_for_deploy(deploy)
    if cfg.fusion == "distribution":
        report.folded = ["F = mu_r (mean of F_L over K)", "y1 = P_CM.down_blocks[0](F)",
                         "y1' = P_CM.up_blocks[0](y1)"]
        report.dropped = ["vision_embedding (F_V)", "text_projection (ConvB)", "learnable_features (F_L)",
                          "L_KL"]
    image = example_inputs(model)[0]
    text = torch.randn(1, cfg.text.context_length, cfg.text.width)
    report.flops_deploy = count_flops(deploy, example_inputs(model))
    report.flops_full_with_text = count_flops(model, (image, text))
    report.flops_full = report.flops_full_with_text if cfg.fusion == "addition" else count_flops(model, (image,))
    return deploy, report
