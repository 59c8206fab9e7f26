"""Figures written by training and evaluation (matplotlib, Agg backend, written atomically).

matplotlib is imported with this module, which training imports before its first epoch: a Ctrl-C
that lands inside matplotlib's first import surfaces as an ImportError, not a KeyboardInterrupt, and
would end the run with a traceback instead of the resume command."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib
import numpy as np

from mrdl_runtime.atomic import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)

GT_COLOUR = np.array([0, 200, 0], dtype=np.float32)
PRED_COLOUR = np.array([0, 230, 255], dtype=np.float32)  # cyan: visible on pink and purple stains


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def plot_training_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Loss terms and validation Dice/IoU per epoch from the rows of the metrics CSV."""
    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for column in ("train_loss", "train_dice_loss", "train_ce", "train_kl"):
        left.plot(epochs, [row[column] for row in history], label=column)
    left.set_xlabel("epoch")
    left.set_title("training loss")
    left.legend()
    for column in ("val_dice", "val_iou"):
        right.plot(epochs, [row[column] for row in history], label=column)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.set_title("validation (threshold 0.5)")
    right.legend()
    fig.tight_layout()
    return _save(fig, Path(path))


def overlay(image: np.ndarray, mask: np.ndarray, colour: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """(S, S, 3) uint8 image with the {0,1} (S, S) mask blended in ``colour``."""
    blended = image.astype(np.float32)
    region = mask.astype(bool)
    blended[region] = (1 - alpha) * blended[region] + alpha * colour
    return blended.astype(np.uint8)


def overlay_grid(rows: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray, float]], path: str | Path) -> Path:
    """A grid, one row per (name, image, ground truth, prediction, dice): image / GT / prediction."""
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3 * len(rows)), squeeze=False)
    for axis_row, (name, image, truth, prediction, dice) in zip(axes, rows):
        panels = (image, overlay(image, truth, GT_COLOUR), overlay(image, prediction, PRED_COLOUR))
        titles = (name, "ground truth", f"prediction (Dice {dice:.3f})")
        for axis, panel, title in zip(axis_row, panels, titles):
            axis.imshow(panel)
            axis.set_title(title, fontsize=8)
            axis.axis("off")
    fig.tight_layout()
    return _save(fig, Path(path))
