"""Image preprocessing shared by training, evaluation, export parity and (re-implemented without
torch) both runtimes: RGB uint8 -> Pillow bilinear resize -> float32 / 255, NCHW.

docs/deploy-manifest.md states the same contract for ``mrdl_runtime`` and the C++ runtime.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

SCALE = 1.0 / 255.0


class ImageReadError(ValueError):
    """An image file that cannot be read as an image."""


def to_rgb(image: np.ndarray) -> np.ndarray:
    """HxW, HxWx1, HxWx3 or HxWx4 uint8 -> HxWx3 uint8 (gray replicated, alpha dropped)."""
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file (PNG, TIF, JPG, ...) as HxWx3 uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageReadError(f"cannot read {path} as an image: {exc}") from exc


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> size x size x 3 uint8 with Pillow's (antialiased) bilinear filter."""
    return np.asarray(Image.fromarray(to_rgb(image)).resize((size, size), Image.BILINEAR), dtype=np.uint8)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 label map -> size x size with nearest-neighbour (labels stay labels)."""
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST), dtype=np.uint8)


def to_model_input(resized: np.ndarray) -> np.ndarray:
    """An already resized HxWx3 uint8 image -> (3, H, W) float32 in [0, 1]."""
    scaled = resized.astype(np.float32) * np.float32(SCALE)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def preprocess(image: np.ndarray, size: int) -> np.ndarray:
    """HxW[xC] uint8 -> (3, size, size) float32 in [0, 1]: the model's input for one image."""
    return to_model_input(resize_rgb(image, size))
