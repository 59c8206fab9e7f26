"""Where images for checking a model come from: one rule for ``mrdl-export`` and ``mrdl-bench``.

``--data`` (the parity gate, INT8 calibration, the benchmark's inputs) names one of:

* an LViT dataset root: the images of ``<root>/<Split>_Folder/img`` for the first split of
  ``splits`` whose folder exists (:data:`EVALUATION_SPLITS` Val, Test, Train for parity and the
  benchmark; :data:`CALIBRATION_SPLITS` Train, Val, Test for calibration);
* otherwise a plain folder: its own images.

Images are the regular files directly in that folder whose suffix (any case) is one of
``mrdl_runtime.imaging.IMAGE_SUFFIXES``, sorted by name; the first ``count`` are used. An empty
folder is an error, never a silent fallback to another folder. Without ``--data``, the built-in
synthetic tiles (:func:`mrdl.data.synthetic.synthetic_sample`). Every image is read and
preprocessed by :mod:`mrdl.data.preprocess` (the runtime's decoding and preprocessing).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrdl_runtime.errors import MrdlError
from mrdl_runtime.imaging import IMAGE_SUFFIXES

EVALUATION_SPLITS = ("Val", "Test", "Train")
CALIBRATION_SPLITS = ("Train", "Val", "Test")
SYNTHETIC = "synthetic"


class ImageSourceError(MrdlError, FileNotFoundError):
    """A ``--data`` folder that does not exist or holds no images by the rule above."""


@dataclass
class ImageSet:
    """Images drawn from one source, preprocessed to (N, 3, S, S); the decoded originals when asked for."""

    source: str  # "synthetic", or "<folder the images came from> (<N> images)"
    names: list[str]  # file names, or synthetic_0000, ...
    tensors: np.ndarray  # (N, 3, S, S) float32
    raw: list[np.ndarray] | None = None  # each (H, W, 3) uint8 RGB at its original size (keep_raw=True)

    def __len__(self) -> int:
        return len(self.tensors)


def image_folder(data: str | Path, *, splits: tuple[str, ...] = EVALUATION_SPLITS) -> Path:
    """The folder whose images ``data`` stands for: the first split's ``img`` of an LViT root, else ``data``."""
    data = Path(data)
    if not data.is_dir():
        raise ImageSourceError(f"--data {data} does not exist or is not a folder (expected an LViT dataset root "
                               f"or a folder of images)")
    for split in splits:
        folder = data / f"{split}_Folder" / "img"
        if folder.is_dir():
            return folder
    return data


def image_files(data: str | Path, *, splits: tuple[str, ...] = EVALUATION_SPLITS) -> list[Path]:
    """The image files of ``data`` by the module's rule, sorted by name; none is an :class:`ImageSourceError`."""
    folder = image_folder(data, splits=splits)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ImageSourceError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def load_images(*, size: int, data: str | Path | None = None, count: int = 8,
                splits: tuple[str, ...] = EVALUATION_SPLITS, synthetic_offset: int = 0,
                keep_raw: bool = False) -> ImageSet:
    """The first ``count`` images of ``data`` (all of them when fewer), or ``count`` synthetic tiles.

    ``size``: the model's input size; ``splits``: which LViT split of a dataset root to read first;
    ``synthetic_offset``: the first synthetic index (calibration and parity use disjoint tiles);
    ``keep_raw``: also keep the decoded images (otherwise each is dropped once preprocessed).
    """
    from .preprocess import preprocess, read_rgb

    if count < 1:
        raise ValueError(f"at least one image is needed, got count={count}")
    if data is None:
        from .synthetic import synthetic_sample

        indices = range(synthetic_offset, synthetic_offset + count)
        names, source = [f"synthetic_{index:04d}" for index in indices], SYNTHETIC
        decoded = (synthetic_sample(index, size=size, seed=0)[0] for index in indices)
    else:
        files = image_files(data, splits=splits)[:count]
        names, source = [path.name for path in files], f"{files[0].parent} ({len(files)} images)"
        decoded = (read_rgb(path) for path in files)
    raw, tensors = [], []
    for image in decoded:
        tensors.append(preprocess(image, size))  # (3, S, S)
        if keep_raw:
            raw.append(image)
    return ImageSet(source=source, names=names, tensors=np.stack(tensors), raw=raw if keep_raw else None)
