"""Tiled inference with a trained model on real images (docs/tiling.md): agreement at the source size,
Dice on a region larger than the training images, and seams.

    python benchmarks/tiling_quality.py --model-dir deploy/ --data /path/to/MoNuSeg

``--model-dir`` must record ``source_size`` (``mrdl-export --source-size 1000x1000``); ``--data`` is
an LViT-layout root whose ``Val_Folder`` holds ``img/`` and ``labelcol/`` of the source size.

* **source size**: every validation image segmented with ``tile=False`` and ``tile=True``; the
  largest probability difference and the share of mask pixels that differ;
* **larger region**: the first four images side by side (2x the source size per axis), tiled
  (``tile="auto"``) against resized whole, as Dice against the ground truth;
* **seams**: each of the first three images mirrored into a continuous 2x2 region (no edges at
  the joins); at the training scale, the mean |jump| of the probabilities across each window
  border over the median difference between neighbouring columns (rows likewise). 1 = no seam;
  the 99th percentile over all columns is printed beside it for scale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from mrdl_runtime import Segmenter
from mrdl_runtime.imaging import read_image
from mrdl_runtime.tiling import plan_tiles


def dice(mask: np.ndarray, truth: np.ndarray) -> float:
    return 2 * np.logical_and(mask, truth).sum() / max(mask.sum() + truth.sum(), 1)


def border_jumps(probability: np.ndarray, starts: list[int], window: int) -> tuple[float, float]:
    """(worst window border, 99th percentile of all columns), each as mean |jump| / median neighbour difference."""
    columns = np.abs(np.diff(probability.astype(np.float64), axis=1)).mean(axis=0)  # [j]: between j and j+1
    borders = {s for s in starts if s > 0} | {s + window for s in starts if s + window < probability.shape[1]}
    typical = np.median(columns)
    return max(columns[b - 1] for b in borders) / typical, float(np.percentile(columns, 99) / typical)


def _grid(tiles: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate([np.concatenate(tiles[:2], axis=1),
                                                np.concatenate(tiles[2:], axis=1)], axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="deploy directory with a source_size")
    parser.add_argument("--data", type=Path, required=True, help="LViT-layout root with Val_Folder/img, labelcol")
    parser.add_argument("--overlap", type=float, default=0.25)
    args = parser.parse_args(argv)

    paths = sorted((args.data / "Val_Folder" / "img").glob("*.png"))
    if len(paths) < 4:
        print(f"{args.data}/Val_Folder/img holds {len(paths)} PNG images; 4 are needed", file=sys.stderr)
        return 2
    truths = [np.asarray(Image.open(args.data / "Val_Folder" / "labelcol" / p.name)) > 0 for p in paths]
    with Segmenter.load(args.model_dir, backend="onnxruntime-cpu") as segmenter:
        source, size = segmenter.manifest.source_size, segmenter.manifest.size
        if source is None:
            print(f"{args.model_dir}/model.json has no source_size: export with --source-size HxW", file=sys.stderr)
            return 2
        worst_diff, worst_flip = 0.0, 0.0
        images = []
        for path in paths:
            image = read_image(path)
            images.append(image)
            whole, tiled = segmenter.predict(image, tile=False), segmenter.predict(image, tile=True)
            worst_diff = max(worst_diff, float(np.abs(whole.probabilities - tiled.probabilities).max()))
            worst_flip = max(worst_flip, float((whole.mask != tiled.mask).mean()))
        print(f"source size, {len(paths)} images: tiled vs untiled probabilities within {worst_diff:.2e}, "
              f"masks differ on {worst_flip:.2%} of pixels at most")

        region, truth = _grid(images[:4]), _grid(truths[:4])
        tiled = segmenter.predict(region, with_probabilities=False, overlap=args.overlap)
        whole = segmenter.predict(region, tile=False, with_probabilities=False)
        plan = plan_tiles(region.shape[:2], source, size, args.overlap)
        print(f"{region.shape[0]}x{region.shape[1]} region: Dice vs ground truth {dice(tiled.mask, truth):.3f} tiled "
              f"(tiled={tiled.tiled}, {len(plan.windows)} windows at {plan.resampled_size[0]}x{plan.resampled_size[1]})"
              f", {dice(whole.mask, truth):.3f} resized whole")

        for path, image in zip(paths[:3], images[:3]):
            top = np.concatenate([image, image[:, ::-1]], axis=1)
            mirrored = _grid([image, image[:, ::-1], image[::-1], image[::-1, ::-1]])
            assert np.array_equal(mirrored[:image.shape[0]], top)
            plan = plan_tiles(mirrored.shape[:2], source, size, args.overlap)
            rows, columns = sorted({y for y, _ in plan.windows}), sorted({x for _, x in plan.windows})
            figures = []
            for blend in ("gaussian", "constant"):
                probability = segmenter.predict(mirrored, at_model_size=True, blend=blend,
                                                overlap=args.overlap).probabilities[0]
                across_columns = border_jumps(probability, columns, size[1])
                across_rows = border_jumps(np.ascontiguousarray(probability.T), rows, size[0])
                figures.append(f"{blend} worst border {max(across_columns[0], across_rows[0]):.2f} "
                               f"(99th percentile {max(across_columns[1], across_rows[1]):.2f})")
            print(f"seams, {path.name} mirrored: " + "; ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
