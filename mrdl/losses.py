"""Training loss L = w_dice * Dice + w_ce * CE + lambda_3 * L_KL (paper: 0.5, 0.5, 1)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from .config import LossConfig


class LossTerms(NamedTuple):
    total: torch.Tensor
    dice: torch.Tensor
    ce: torch.Tensor
    kl: torch.Tensor


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for one class, softmax over classes otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _one_hot(target: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, H, W) or (B, 1, H, W) class indices -> (B, K, H, W) float (K=1: the mask itself)."""
    if target.ndim == 4:
        target = target[:, 0]
    if n_classes == 1:
        return target.unsqueeze(1).float()
    return F.one_hot(target.long(), n_classes).permute(0, 3, 1, 2).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1e-5) -> torch.Tensor:
    """1 - soft Dice, averaged over samples and classes."""
    probs = probabilities(logits)
    truth = _one_hot(target, logits.shape[1])
    dims = (2, 3)
    intersection = (probs * truth).sum(dims)
    union = probs.sum(dims) + truth.sum(dims)
    return 1.0 - ((2.0 * intersection + smooth) / (union + smooth)).mean()


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits for one class, cross-entropy otherwise."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, _one_hot(target, 1))
    labels = target[:, 0] if target.ndim == 4 else target
    return F.cross_entropy(logits, labels.long())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kl: torch.Tensor | None,
                      cfg: LossConfig = LossConfig()) -> LossTerms:
    dice = soft_dice_loss(logits, target)
    ce = cross_entropy_loss(logits, target)
    kl = kl if kl is not None else logits.new_zeros(())
    total = cfg.dice_weight * dice + cfg.ce_weight * ce + cfg.kl_weight * kl
    return LossTerms(total, dice, ce, kl)
