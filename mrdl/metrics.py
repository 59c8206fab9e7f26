"""Evaluation as LViT does it: threshold 0.5, per-image Dice and IoU averaged over images."""

from __future__ import annotations

import numpy as np
import torch

from mrdl_runtime.imaging import probabilities_to_mask

from .losses import probabilities


def predict_mask(logits: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """(B, K, H, W) logits -> (B, H, W) long masks by the runtime's rule on the model's probabilities.

    The rule is :func:`mrdl_runtime.imaging.probabilities_to_mask` (``p > threshold`` for one class,
    else the argmax of the probabilities) applied to float32 probabilities, as every runtime sees them.
    """
    probs = probabilities(logits.detach()).float().cpu().numpy()  # (B, K, H, W)
    masks = np.stack([probabilities_to_mask(image, threshold=threshold) for image in probs])  # (B, H, W) uint8
    return torch.from_numpy(masks).long().to(logits.device)


def dice_iou_per_image(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image foreground Dice = 2|G n P|/(|G|+|P|) and IoU, LViT's protocol. (B,) each.

    Both masks empty counts as a perfect score (1.0), as there is nothing to miss.
    """
    pred = pred.reshape(pred.shape[0], -1).bool()
    target = target.reshape(target.shape[0], -1).bool()
    intersection = (pred & target).sum(1).double()
    sizes = pred.sum(1).double() + target.sum(1).double()
    union = (pred | target).sum(1).double()
    empty = sizes == 0
    dice = torch.where(empty, torch.ones_like(sizes), 2 * intersection / sizes.clamp_min(1))
    iou = torch.where(empty, torch.ones_like(sizes), intersection / union.clamp_min(1))
    return dice, iou
