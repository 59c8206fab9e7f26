"""Pre- and postprocessing with numpy + Pillow, exactly as training did (docs/deploy-manifest.md).

Preprocessing re-implements ``mrdl.data.preprocess`` without importing mrdl: gray replicated to
RGB, alpha dropped, Pillow bilinear (antialiased) resize on the uint8 RGB image, times ``scale``
(1/255) in float32, HWC -> CHW. Postprocessing resizes each probability map back to the original
size with Pillow's mode-"F" bilinear resize, then thresholds (one class) or takes the argmax.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

CHANNEL_ORDERS = ("RGB", "BGR")


class ImageInputError(ValueError):
    """An input image of the wrong dtype, shape or channel count."""


def check_image(image: object, *, channel_order: str = "RGB") -> np.ndarray:
    """Validate one input image and return it as HxWx3 uint8 RGB.

    Accepts HxWx3 (RGB, or BGR with ``channel_order="BGR"``), HxWx4 (alpha dropped) and
    grayscale HxW or HxWx1 (replicated to three channels), all uint8.
    """
    expected = "an HxWx3 uint8 RGB array (or grayscale HxW / HxWx1, or HxWx4 with alpha)"
    if channel_order not in CHANNEL_ORDERS:
        raise ImageInputError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    if not isinstance(image, np.ndarray):
        raise ImageInputError(f"expected {expected}, got {type(image).__name__}")
    if image.dtype != np.uint8:
        hint = " (scale [0, 1] floats with (x * 255).round().astype(np.uint8))" if image.dtype.kind == "f" else ""
        raise ImageInputError(f"expected {expected}; got dtype {image.dtype}{hint}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ImageInputError(f"expected {expected}; got a {image.ndim}-d array of shape {image.shape}")
    height, width, channels = image.shape
    if channels not in (1, 3, 4):
        layout = " (it looks channels-first; transpose to HxWxC)" if height in (1, 3, 4) else ""
        raise ImageInputError(f"expected {expected}; got shape {image.shape} with {channels} channels{layout}")
    if height == 0 or width == 0:
        raise ImageInputError(f"expected {expected}; got an empty image of shape {image.shape}")
    if channels == 1:
        return np.repeat(image, 3, axis=2)
    rgb = image[:, :, :3]
    if channel_order == "BGR":
        rgb = rgb[:, :, ::-1]
    return np.ascontiguousarray(rgb)


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size[0] x size[1] x 3 uint8 with Pillow's bilinear filter (as training)."""
    height, width = size
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR), dtype=np.uint8)


def preprocess(image: np.ndarray, size: tuple[int, int], *, scale: float = 1.0 / 255.0,
               channel_order: str = "RGB") -> np.ndarray:
    """One image -> the model input (3, size[0], size[1]) float32, values = uint8 * scale."""
    resized = resize_rgb(check_image(image, channel_order=channel_order), size).astype(np.float32)
    return np.ascontiguousarray((resized * np.float32(scale)).transpose(2, 0, 1))  # (3, H, W)


def resize_probabilities(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float32 -> (C, size[0], size[1]) float32, each map with Pillow mode-"F" bilinear."""
    height, width = size
    if probabilities.shape[1:] == (height, width):
        return probabilities.astype(np.float32, copy=False)
    maps = [np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32))  # mode "F"
                       .resize((width, height), Image.BILINEAR), dtype=np.float32) for p in probabilities]
    return np.stack(maps)


def probabilities_to_mask(probabilities: np.ndarray, *, threshold: float) -> np.ndarray:
    """(C, H, W) probabilities -> (H, W) uint8 mask: ``p > threshold`` for one class, else argmax."""
    if probabilities.shape[0] == 1:
        return (probabilities[0] > threshold).astype(np.uint8)
    return probabilities.argmax(axis=0).astype(np.uint8)
