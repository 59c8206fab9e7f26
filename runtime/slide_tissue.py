"""Tissue detection on a whole slide's low-resolution level: Otsu on the HSV saturation.

Stained tissue is coloured, glass and background are white or grey: the saturation
(``(max - min) / max`` of RGB, Pillow's HSV) separates them. Otsu's threshold on the thumbnail's
saturation histogram is clipped to [MIN_THRESHOLD, MAX_THRESHOLD]: the floor keeps a blank slide's
noise out, the ceiling keeps a slide that is all tissue (where Otsu splits the tissue itself) whole.
The mask is dilated by one thumbnail pixel so that windows at a tissue border are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

MIN_THRESHOLD = 0.05  # saturation in [0, 1]
MAX_THRESHOLD = 0.15
THUMBNAIL_SIDE = 2048  # the tissue mask's longest side, at most


@dataclass(frozen=True)
class TissueMask:
    """``mask`` (h, w) bool over the whole slide (dilated), ``fraction`` of tissue pixels (before dilation),
    ``threshold`` used (saturation in [0, 1])."""

    mask: np.ndarray
    fraction: float
    threshold: float

    def any_in(self, rows: tuple[float, float], columns: tuple[float, float]) -> bool:
        """Whether any tissue lies in the region given as fractions [0, 1] of the slide's height and width."""
        height, width = self.mask.shape
        r0, r1 = int(np.floor(rows[0] * height)), int(np.ceil(rows[1] * height))
        c0, c1 = int(np.floor(columns[0] * width)), int(np.ceil(columns[1] * width))
        return bool(self.mask[max(r0, 0):max(r1, r0 + 1), max(c0, 0):max(c1, c0 + 1)].any())


def saturation(rgb: np.ndarray) -> np.ndarray:
    """(h, w, 3) uint8 -> (h, w) uint8 saturation (Pillow's HSV 'S' band, 0-255)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"))[:, :, 1]


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the t maximising the between-class variance of ``<= t`` vs ``> t``."""
    histogram = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = histogram.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(histogram)
    mean_low = np.cumsum(histogram * levels)
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_low[-1] * weight_low - total * mean_low) ** 2 / (weight_low * weight_high)
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """A 3x3 binary dilation."""
    padded = np.pad(mask, 1)
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= padded[dy:dy + mask.shape[0], dx:dx + mask.shape[1]]
    return out


def tissue_mask(thumbnail: np.ndarray, threshold: float | None = None) -> TissueMask:
    """The tissue of a (h, w, 3) uint8 thumbnail: saturation > ``threshold`` (in [0, 1]; None: Otsu, clipped)."""
    sat = saturation(thumbnail)
    if threshold is None:
        threshold = min(max(otsu_threshold(sat) / 255.0, MIN_THRESHOLD), MAX_THRESHOLD)
    tissue = sat > threshold * 255.0
    return TissueMask(_dilate(tissue), float(tissue.mean()), float(threshold))
