"""Image reading and preprocessing for training, evaluation and export parity: the runtime's own
functions (:mod:`mrdl_runtime.imaging`), so training and both runtimes share one implementation.

Reading applies the one decoding rule (8/16-bit, gray/RGB/RGBA/palette, float -> RGB uint8) under
a pixel limit; preprocessing is Pillow bilinear resize -> float32 / 255 -> CHW.
docs/deploy-manifest.md states the rule and the contract for the C++ runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mrdl_runtime import imaging
from mrdl_runtime.imaging import DEFAULT_MAX_PIXELS, ImageReadError

SCALE = 1.0 / 255.0

__all__ = ["SCALE", "ImageReadError", "preprocess", "read_rgb", "resize_mask", "resize_rgb", "to_model_input"]


def read_rgb(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file (PNG, TIF, JPG, ...; 8/16-bit, float, palette) as HxWx3 uint8 RGB."""
    return imaging.read_image(path, max_pixels=max_pixels)


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """Any image array (:func:`~mrdl_runtime.imaging.to_rgb8`) -> size x size x 3 uint8, Pillow bilinear."""
    return imaging.resize_rgb(imaging.to_rgb8(image), (size, size))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 label map -> size x size with nearest-neighbour (labels stay labels)."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST), dtype=np.uint8)


def to_model_input(resized: np.ndarray) -> np.ndarray:
    """An already resized HxWx3 uint8 image -> (3, H, W) float32 in [0, 1]."""
    return imaging.to_model_input(resized, SCALE)


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """HxW[xC] image -> (3, size, size) float32 in [0, 1]: the model's input for one image."""
    return to_model_input(resize_rgb(image, size))
