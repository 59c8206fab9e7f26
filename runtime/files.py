"""Segment image files: expand folders and globs, predict in batches, write PNG masks and overlays.

The library behind ``mrdl predict``; torch-free like the rest of the runtime. Masks are written
as 8-bit PNGs (one class: 0 / 255; several: class index scaled to 0..255) and overlays as RGB
PNGs of the image with the mask tinted in; both go to a temporary name and are renamed.
"""

from __future__ import annotations

import glob
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .segmenter import Prediction, Segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
OVERLAY_COLOURS = np.array([[0, 255, 0], [255, 0, 0], [0, 128, 255], [255, 200, 0], [255, 0, 255]], dtype=np.float32)
OVERLAY_ALPHA = 0.45


class InputFilesError(ValueError):
    """Input paths that name no images, or images that cannot be read."""


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_files` did: counts, where, with which backend, and how fast."""

    n_images: int
    out_dir: Path
    backend: str
    precision: str
    batches: int
    mean_batch_latency_ms: float  # model only, per call of up to max_batch images, since the model was loaded
    total_s: float  # reading, preprocessing, inference, postprocessing and writing

    @property
    def per_image_ms(self) -> float:
        return 1000.0 * self.total_s / self.n_images if self.n_images else 0.0

    def line(self) -> str:
        """One summary sentence for the terminal."""
        return (f"{self.n_images} images -> {self.out_dir} (masks/, overlays/) | backend {self.backend} "
                f"{self.precision} | model latency {self.mean_batch_latency_ms:.1f} ms per batch "
                f"({self.batches} batches) | {self.per_image_ms:.1f} ms per image end to end")


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images, not recursive) and glob patterns -> sorted unique image paths."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise InputFilesError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not matches:
                raise InputFilesError(f"no files match the pattern {item}")
        else:
            raise InputFilesError(f"{item} is neither a file, a folder nor a glob pattern that matches files")
        found.update(dict.fromkeys(matches))
    if not found:
        raise InputFilesError("no input images given")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise InputFilesError(f"{stems[path.stem]} and {path} would both write {path.stem}.png; "
                                  "predict them into separate --out folders")
        stems[path.stem] = path
    return list(found)


def read_image(path: Path) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB (gray replicated, alpha dropped), as training reads it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise InputFilesError(f"cannot read {path} as an image: {exc}") from exc


def mask_to_png(mask: np.ndarray, n_classes: int) -> np.ndarray:
    """(H, W) class indices -> uint8 grey levels: 0 / 255 for one class, evenly spaced for several."""
    step = 255 // max(n_classes - 1, 1)
    return (mask.astype(np.uint16) * step).astype(np.uint8)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 image with each foreground class tinted in its colour (HxWx3 uint8)."""
    blended = image.astype(np.float32)
    for label in range(1, int(mask.max()) + 1):
        where = mask == label
        colour = OVERLAY_COLOURS[(label - 1) % len(OVERLAY_COLOURS)]
        blended[where] = (1 - OVERLAY_ALPHA) * blended[where] + OVERLAY_ALPHA * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def write_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a PNG through a temporary file renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(array).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _chunks(paths: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(paths), size):
        yield paths[start:start + size]


def predict_files(segmenter: Segmenter, inputs: Iterable[str | Path], out_dir: str | Path, *,
                  progress: bool = True) -> PredictSummary:
    """Segment every image named by ``inputs`` and write ``out_dir/masks/<stem>.png`` and
    ``out_dir/overlays/<stem>.png`` at each image's original size."""
    paths = expand_inputs(inputs)
    out_dir = Path(out_dir)
    start, calls_before = time.perf_counter(), segmenter.runner.count
    n_classes = segmenter.manifest.n_classes
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for chunk in _chunks(paths, segmenter.manifest.max_batch):
            images = [read_image(path) for path in chunk]
            predictions: list[Prediction] = segmenter.predict_batch(images)
            for path, image, prediction in zip(chunk, images, predictions):
                write_png(mask_to_png(prediction.mask, n_classes), out_dir / "masks" / f"{path.stem}.png")
                write_png(overlay(image, prediction.mask), out_dir / "overlays" / f"{path.stem}.png")
            bar.update(len(chunk))
    return PredictSummary(n_images=len(paths), out_dir=out_dir, backend=segmenter.backend,
                          precision=segmenter.precision, batches=segmenter.runner.count - calls_before,
                          mean_batch_latency_ms=segmenter.mean_latency_ms, total_s=time.perf_counter() - start)
