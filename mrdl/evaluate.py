"""Evaluation as LViT does it: threshold 0.5 at the model size, per-image Dice and IoU averaged over images.

:func:`predict_masks` gives PyTorch's predicted mask per image name (the reference the runtimes compare
against); :func:`evaluate_checkpoint` writes a per-image CSV, a summary JSON and an overlay grid PNG.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mrdl_runtime.atomic import atomic_path

from .checkpoint import load_checkpoint
from .data.dataset import SegmentationDataset
from .metrics import dice_iou_per_image, predict_mask

GRID_ROWS = 8


@torch.no_grad()
def predict_dataset(model: torch.nn.Module, dataset: SegmentationDataset, *, batch_size: int = 4,
                    threshold: float = 0.5, device: torch.device | None = None, channels_last: bool = False,
                    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                    ) -> dict[str, np.ndarray]:
    """Eval-mode predictions on the unaugmented images of ``dataset``: {name: (S, S) uint8 mask}.

    ``device``, ``channels_last`` and ``autocast`` let training validate on its own device and precision.
    """
    was_training = model.training
    model.eval()
    masks: dict[str, np.ndarray] = {}
    try:
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = torch.stack([item["image"] for item in items]).to(device)  # (B, 3, S, S)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(images).logits
            predicted = predict_mask(logits.float(), threshold=threshold).cpu()  # (B, S, S)
            for item, mask in zip(items, predicted):
                masks[item["name"]] = mask.to(torch.uint8).numpy()
    finally:
        model.train(was_training)
    return masks


def score_masks(predictions: dict[str, np.ndarray], dataset: SegmentationDataset) -> list[dict]:
    """Per-image Dice and IoU of ``predictions`` against the dataset's masks, in dataset order."""
    rows = []
    for index, name in enumerate(dataset.names):
        truth = torch.tensor(dataset.raw(index)[1])[None]  # (1, S, S)
        dice, iou = dice_iou_per_image(torch.tensor(predictions[name])[None], truth)
        rows.append({"image": name, "dice": float(dice[0]), "iou": float(iou[0]),
                     "gt_pixels": int(truth.sum()), "pred_pixels": int(predictions[name].sum())})
    return rows


def predict_masks(ckpt: str | Path, data_root: str | Path, *, split: str = "Val") -> dict[str, np.ndarray]:
    """PyTorch's predicted masks of a checkpoint on a split: {mask file name: (S, S) uint8 in {0,1}}."""
    model, checkpoint = load_checkpoint(ckpt)
    dataset = SegmentationDataset(data_root, split, image_size=checkpoint.config.model.image_size, require_text=False)
    return predict_dataset(model, dataset)


def evaluate_checkpoint(ckpt: str | Path, data_root: str | Path, split: str, out_dir: str | Path) -> dict:
    """Evaluate ``ckpt`` on ``data_root``'s ``split``; write per_image.csv, summary.json, overlays.png.

    Returns the summary: mean Dice and IoU over images, image count, threshold, size and provenance.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, checkpoint = load_checkpoint(ckpt)
    size = checkpoint.config.model.image_size
    dataset = SegmentationDataset(data_root, split, image_size=size, require_text=False)
    predictions = predict_dataset(model, dataset)
    rows = score_masks(predictions, dataset)
    with atomic_path(out_dir / "per_image.csv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    summary = {
        "checkpoint": str(Path(ckpt).resolve()), "data_root": str(Path(data_root).resolve()), "split": split,
        "images": len(rows), "image_size": size, "threshold": 0.5,
        "dice": float(np.mean([r["dice"] for r in rows])), "iou": float(np.mean([r["iou"] for r in rows])),
        "config": checkpoint.config.name, "provenance": checkpoint.provenance,
    }
    with atomic_path(out_dir / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    from .plots import overlay_grid

    grid = [(r["image"], dataset.raw(i)[0], dataset.raw(i)[1], predictions[r["image"]], r["dice"])
            for i, r in enumerate(rows[:GRID_ROWS])]
    overlay_grid(grid, out_dir / "overlays.png")
    return summary
