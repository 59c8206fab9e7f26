"""Evaluation as LViT does it: threshold 0.5, per-image Dice and IoU averaged over images."""

from __future__ import annotations

import torch


def predict_mask(logits: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Binary mask (prob > threshold) for one class; argmax label map otherwise. (B, H, W) long."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0]) > threshold).long()
    return logits.argmax(dim=1)


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
