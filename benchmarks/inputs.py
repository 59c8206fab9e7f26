"""The images every backend sees in one benchmark run, and the pre/post-processing around them.

Inputs come from :func:`mrdl.data.sources.load_images`, the rule ``mrdl-export`` uses too: the
built-in synthetic tiles, or the images of ``--data`` (an LViT root's first split of Val, Test,
Train, or a plain folder of images). Preprocessing is ``mrdl.data.preprocess.preprocess`` (Pillow
bilinear, /255, NCHW); postprocessing is the runtime's (resize the probabilities to the original
size, then threshold).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrdl.data.sources import ImageSourceError, load_images

from mrdl_runtime.errors import MrdlError


class InputError(MrdlError, ValueError):
    """A data folder the benchmark cannot draw images from."""


@dataclass
class InputSet:
    """Raw images (original sizes, uint8 RGB) and the same images preprocessed to (N, 3, S, S)."""

    source: str  # "synthetic" or "<folder the images came from> (<N> images)"
    names: list[str]
    raw: list[np.ndarray]  # each (H, W, 3) uint8
    tensors: np.ndarray  # (N, 3, S, S) float32
    size: int

    def __len__(self) -> int:
        return len(self.raw)

    def indices(self, step: int, batch: int) -> list[int]:
        """The images of batch number ``step``: consecutive indices, wrapping around the pool."""
        return [(step * batch + offset) % len(self) for offset in range(batch)]

    def batch(self, step: int, batch: int) -> np.ndarray:
        """Preprocessed batch number ``step``: (batch, 3, S, S) float32, contiguous."""
        return np.ascontiguousarray(self.tensors[self.indices(step, batch)])


def load_inputs(*, size: int, data: str | Path | None = None, count: int = 8) -> InputSet:
    """Load ``count`` images (all of a real folder's images when fewer) and preprocess them to ``size``."""
    if count < 1:
        raise InputError(f"the number of images must be >= 1, got {count}")
    try:
        images = load_images(size=size, data=data, count=count, keep_raw=True)
    except ImageSourceError as exc:
        raise InputError(str(exc)) from exc
    return InputSet(source=images.source, names=images.names, raw=images.raw, tensors=images.tensors, size=size)


def preprocess_batch(images: list[np.ndarray], size: int) -> np.ndarray:
    """Raw uint8 images -> (B, 3, size, size) float32, the training-time preprocessing."""
    from mrdl.data.preprocess import preprocess

    return np.stack([preprocess(image, size) for image in images])


def postprocess_batch(probabilities: np.ndarray, images: list[np.ndarray], *,
                      threshold: float = 0.5) -> list[np.ndarray]:
    """(B, n_classes, S, S) probabilities -> one uint8 mask per image at its original size."""
    from mrdl_runtime.imaging import probabilities_to_mask, resize_probabilities

    return [probabilities_to_mask(resize_probabilities(probs, image.shape[:2]), threshold=threshold)
            for probs, image in zip(probabilities, images)]
