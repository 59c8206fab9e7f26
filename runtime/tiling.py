"""Tiled inference at the training scale (docs/tiling.md is the contract; the C++ runtime follows it too).

An image much larger than the training images is resampled to the training scale
(:func:`resampled_size`: model size / ``source_size`` per axis), padded at the bottom and right to
at least the model size, cut into overlapping model-size windows (:func:`window_starts`, the last
one clamped to the edge, MONAI's ``sliding_window_inference`` rule), run in batches, blended with
gaussian or constant weights (:func:`blend_weights`) in float32 and mapped back to the input size.

Both resamplings are :mod:`mrdl_runtime.resample`'s documented rule, horizontal pass first,
streamed in row strips (:func:`~mrdl_runtime.resample.resample_rgb`,
:func:`~mrdl_runtime.resample.resized_strips`), as the C++ runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from .errors import OptionsError
from .imaging import ImageInputError, to_model_input
from .resample import resized_strips

TILE_CHOICES = ("auto", True, False)
BLEND_MODES = ("gaussian", "constant")
DEFAULT_OVERLAP = 0.25
MAX_OVERLAP = 0.9  # each pixel seen by about 1 / (1 - overlap)**2 windows: 100 at 0.9, 250,000 at 0.998 (hours)
GAUSSIAN_SIGMA_SCALE = 0.125  # sigma = 0.125 * window side, as MONAI's sliding_window_inference
MAX_WINDOW_COVERAGE = 16  # windows x model pixels <= 16 x max_pixels (an overlap of 0.75 sees each pixel 16 times)


@dataclass(frozen=True)
class TileOptions:
    """How to tile: ``tile`` "auto" / True / False, window ``overlap`` in [0, MAX_OVERLAP], ``blend`` mode."""

    tile: str | bool = "auto"
    overlap: float = DEFAULT_OVERLAP
    blend: str = "gaussian"

    def __post_init__(self) -> None:
        if not (self.tile is True or self.tile is False or isinstance(self.tile, str) and self.tile == "auto"):
            raise OptionsError(f"tile must be 'auto', True or False, got {self.tile!r}")
        overlap = self.overlap
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0.0 <= overlap <= MAX_OVERLAP:
            raise OptionsError(f"overlap must be a number with 0 <= overlap <= {MAX_OVERLAP} (the fraction of a window "
                               f"shared with its neighbour; default {DEFAULT_OVERLAP}; {MAX_OVERLAP} already runs "
                               f"each pixel about 100 times), got {overlap!r}")
        if self.blend not in BLEND_MODES:
            raise OptionsError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")


def should_tile(image_size: tuple[int, int], source_size: tuple[int, int] | None, tile: str | bool) -> bool:
    """The ``tile`` decision for one image: "auto" tiles when the image is more than 1.5 times the
    training source size along either axis (``2 * H > 3 * sh or 2 * W > 3 * sw``)."""
    if tile is False:
        return False
    if source_size is None:
        if tile is True:
            raise OptionsError("tile=True needs the training source size, and model.json has no 'source_size'; "
                               "re-export with mrdl-export --source-size HxW (e.g. 1000x1000 for MoNuSeg)")
        return False
    if tile is True:
        return True
    (height, width), (source_h, source_w) = image_size, source_size
    return 2 * height > 3 * source_h or 2 * width > 3 * source_w


def resampled_size(image_size: tuple[int, int], source_size: tuple[int, int],
                   model_size: tuple[int, int]) -> tuple[int, int]:
    """The image's size at the training scale: ``max(1, round_half_up(H * mh / sh))`` per axis, in integers."""
    return tuple(max(1, (2 * n * m + s) // (2 * s)) for n, m, s in zip(image_size, model_size, source_size))


def window_starts(length: int, window: int, overlap: float) -> list[int]:
    """Window starts along one axis of ``length >= window``: stride ``max(1, floor(window * (1 - overlap)))``,
    the last window clamped to end at the edge."""
    if length < window:
        raise ValueError(f"an axis of {length} pixels is shorter than the window ({window}); pad it first")
    stride = max(1, math.floor(window * (1.0 - overlap)))
    return [min(i * stride, length - window) for i in range(window_count(length, window, overlap))]


def window_count(length: int, window: int, overlap: float) -> int:
    """How many windows :func:`window_starts` places along an axis, counted without building them."""
    stride = max(1, math.floor(window * (1.0 - overlap)))
    return 1 if length <= window else (length - window + stride - 1) // stride + 1


def padded_to_window(resampled: tuple[int, int], model_size: tuple[int, int]) -> tuple[int, int]:
    """The resampled image zero-padded to at least one window on each axis."""
    return max(resampled[0], model_size[0]), max(resampled[1], model_size[1])


def window_grid(padded_size: tuple[int, int], model_size: tuple[int, int], overlap: float) -> list[tuple[int, int]]:
    """(row, column) starts of every window in visiting order: row-major, both ascending."""
    rows = window_starts(padded_size[0], model_size[0], overlap)
    columns = window_starts(padded_size[1], model_size[1], overlap)
    return [(y, x) for y in rows for x in columns]


def _gaussian(side: int) -> np.ndarray:
    sigma = GAUSSIAN_SIGMA_SCALE * side
    return np.array([math.exp(-(d * d) / (2.0 * sigma * sigma)) for d in (i - (side - 1) / 2.0 for i in range(side))])


def blend_weights(model_size: tuple[int, int], blend: str) -> np.ndarray:
    """(mh, mw) float32 window weights: all 1 ("constant"), or ``g_rows[i] * g_cols[j]`` in double with
    ``g[i] = exp(-d^2 / (2 sigma^2))``, ``d = i - (m-1)/2``, ``sigma = 0.125 m`` ("gaussian"). Unclamped:
    ``|d| < 4 sigma``, so every weight exceeds exp(-16) = 1.1e-7 and every pixel's weight sum is > 0."""
    if blend not in BLEND_MODES:
        raise OptionsError(f"blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")
    if blend == "constant":
        return np.ones(model_size, dtype=np.float32)
    return np.outer(_gaussian(model_size[0]), _gaussian(model_size[1])).astype(np.float32)  # product in float64


# ---- stitching ----

@dataclass(frozen=True)
class TilePlan:
    """The geometry of one tiled image: its sizes and its windows' (row, column) starts in visiting order."""

    image_size: tuple[int, int]
    resampled_size: tuple[int, int]
    padded_size: tuple[int, int]
    windows: tuple[tuple[int, int], ...]


def plan_tiles(image_size: tuple[int, int], source_size: tuple[int, int], model_size: tuple[int, int],
               overlap: float, *, max_pixels: int | None = None) -> TilePlan:
    """Resampled size, padded size (bottom/right, at least the model size) and window starts of one image;
    with ``max_pixels``, :func:`check_tile_cost` first (docs/tiling.md section 3, "Cost bound")."""
    resampled = resampled_size(image_size, source_size, model_size)
    padded = padded_to_window(resampled, model_size)
    if max_pixels is not None:
        check_tile_cost(image_size, resampled, padded, model_size, overlap, max_pixels)
    return TilePlan(tuple(image_size), resampled, padded, tuple(window_grid(padded, model_size, overlap)))


def check_tile_cost(image_size: tuple[int, int], resampled: tuple[int, int], padded: tuple[int, int],
                    model_size: tuple[int, int], overlap: float, max_pixels: int) -> None:
    """Refuse (:class:`~mrdl_runtime.imaging.ImageInputError`) a tiled image whose resampled image holds more
    than ``max_pixels`` pixels or whose windows more than ``MAX_WINDOW_COVERAGE * max_pixels`` model pixels,
    counted before anything is allocated (:func:`window_count` per axis)."""
    count = window_count(padded[0], model_size[0], overlap) * window_count(padded[1], model_size[1], overlap)
    seen = count * model_size[0] * model_size[1]
    (h, w), (height, width) = resampled, image_size
    if h * w > max_pixels or seen > MAX_WINDOW_COVERAGE * max_pixels:
        what = (f"{h}x{w} = {h * w:,} pixels" if h * w > max_pixels else
                f"{count:,} windows of {model_size[0]}x{model_size[1]} = {seen:,} model pixels (more than "
                f"{MAX_WINDOW_COVERAGE} x the limit: lower the overlap)")
        raise ImageInputError(f"a {height}x{width} image at the training scale is {what}, over the limit of "
                              f"{max_pixels:,} pixels; raise it with --max-pixels (max_pixels=) if memory allows")


def stitch(resampled: np.ndarray, plan: TilePlan, run: Callable[[np.ndarray], np.ndarray], *,
           model_size: tuple[int, int], n_classes: int, max_batch: int, scale: float,
           options: TileOptions, progress: bool = False) -> np.ndarray:
    """Run every window of the resampled (h, w, 3) uint8 image and blend: -> (C, h, w) float32.

    ``run`` maps a (B, 3, mh, mw) float32 batch (B <= max_batch) to (B, C, mh, mw) probabilities;
    ``progress`` shows a bar of the windows (on stderr, removed when done).
    """
    (mh, mw), (hp, wp), (h, w) = model_size, plan.padded_size, plan.resampled_size
    padded = resampled
    if (hp, wp) != (h, w):  # zero pixels at the bottom and right
        padded = np.zeros((hp, wp, 3), dtype=np.uint8)
        padded[:h, :w] = resampled
    weights = blend_weights(model_size, options.blend)  # (mh, mw)
    num = np.zeros((n_classes, hp, wp), dtype=np.float32)
    den = np.zeros((hp, wp), dtype=np.float32)
    bar = tqdm(total=len(plan.windows), desc="windows", unit="window", leave=False, disable=not progress)
    for begin in range(0, len(plan.windows), max_batch):
        chunk = plan.windows[begin:begin + max_batch]
        batch = np.stack([to_model_input(padded[y:y + mh, x:x + mw], scale) for y, x in chunk])  # (B, 3, mh, mw)
        probabilities = run(batch)  # (B, C, mh, mw)
        for (y, x), window in zip(chunk, probabilities):
            num[:, y:y + mh, x:x + mw] += weights * window  # float32 product, then float32 sum
            den[y:y + mh, x:x + mw] += weights
        bar.update(len(chunk))
    bar.close()
    num /= den
    return num[:, :h, :w]


def probabilities_at(stitched: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) stitched maps -> (C, size[0], size[1]) float32 by the float32 bilinear rule."""
    out = np.empty((len(stitched), *size), dtype=np.float32)
    for maps, probability in zip(out, stitched):
        for rows, strip in resized_strips(probability, size):
            maps[rows] = strip
    return out


def mask_at(stitched: np.ndarray, size: tuple[int, int], *, threshold: float) -> np.ndarray:
    """(C, h, w) stitched maps -> the (size[0], size[1]) uint8 mask, one row strip of every class at a
    time: ``p > threshold`` for one class, else argmax (the first maximum wins; a NaN counts as the maximum)."""
    mask = np.empty(size, dtype=np.uint8)
    for strips in zip(*(resized_strips(probability, size) for probability in stitched)):
        rows, best = strips[0]
        if len(strips) == 1:
            mask[rows] = best > threshold
            continue
        labels = np.zeros(best.shape, dtype=np.uint8)
        for label, (_, strip) in enumerate(strips[1:], start=1):
            better = (strip > best) | (np.isnan(strip) & ~np.isnan(best))
            labels[better] = label
            best = np.where(better, strip, best)
        mask[rows] = labels
    return mask
