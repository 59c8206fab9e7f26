"""Bilinear resampling by Pillow's rule: the Python runtime's one resampler (runtime/cpp/src/resample.cpp in C++).

The rule (runtime/VECTORS.md, "The resize rule") is Pillow's antialiased bilinear filter: per axis,
taps from :func:`axis_taps`; uint8 images in 22-bit fixed point, float32 maps in double. It runs in
two ways, because the installed Pillow does not always run its two passes in the order its older
sources document (VECTORS.md, "Pass order"):

* **Pillow itself** (:func:`resize_rgb`, :func:`pillow_map_strips`): the whole-image path of the
  runtime, identical to training's preprocessing (:mod:`mrdl.data.preprocess` calls
  :func:`resize_rgb`) whatever pass order the installed Pillow picks.
* **The documented rule, horizontal pass first** (:func:`resample_rgb`, :func:`resized_strips`, and
  their passes :func:`horizontal_pass`, :func:`vertical_pass_uint8`, :func:`vertical_pass_float` for
  callers that stream their own rows, as the whole-slide reader): the tiled path, identical to the
  C++ runtime's ``PassOrder::HorizontalFirst``. It is streamed in row strips: the image never exists
  as floats at the input resolution, and the strips do not change a single value (each intermediate
  row depends on its own input row only).

The two agree exactly unless Pillow 13 picks the other order: it runs the vertical pass first when the
height shrinks by more than twice as many pixels as the width (VECTORS.md, "Pass order"; e.g. 70x50 -> 64x64,
where the width grows); then they may differ by one grey level on some pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
from PIL import Image

STRIP_BYTES = 1 << 24  # row strips of about 16 MB bound the temporary copies of large images
PRECISION_BITS = 22  # Pillow's fixed point for uint8 images: 32 bits - 8 for the value - 2 of headroom


def rows_per_strip(row_bytes: int) -> int:
    """How many rows of ``row_bytes`` bytes make a strip of about :data:`STRIP_BYTES`."""
    return max(1, STRIP_BYTES // max(row_bytes, 1))


# ---- Pillow itself: the whole-image path (as training) ----

def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size[0] x size[1] x 3 uint8 with Pillow's bilinear filter (as training)."""
    height, width = size
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.BILINEAR), dtype=np.uint8)


def _resized_map(probability: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """One (h, w) probability map -> a Pillow mode-"F" image of size[0] x size[1] (bilinear)."""
    height, width = size
    return Image.fromarray(np.ascontiguousarray(probability, dtype=np.float32)).resize((width, height), Image.BILINEAR)


def _strips(image: Image.Image) -> Iterator[tuple[slice, np.ndarray]]:
    """(row slice, float32 rows) of a mode-"F" image in strips of about STRIP_BYTES."""
    width, height = image.size
    rows = rows_per_strip(4 * width)
    for start in range(0, height, rows):
        stop = min(start + rows, height)
        yield slice(start, stop), np.asarray(image.crop((0, start, width, stop)), dtype=np.float32)


def pillow_map_strips(probability: np.ndarray, size: tuple[int, int]) -> Iterator[tuple[slice, np.ndarray]]:
    """(row slice, float32 rows) of one (h, w) map resized to ``size`` by Pillow's mode-"F" bilinear resize."""
    return _strips(_resized_map(probability, size))


# ---- the documented rule, horizontal pass first, one axis at a time: the tiled path (as C++) ----

@dataclass(frozen=True)
class AxisTaps:
    """Bilinear taps of one axis ``n_in -> n_out``: first input index, tap count and weights per output."""

    first: np.ndarray  # (n_out,) int64
    count: np.ndarray  # (n_out,) int64
    weights: np.ndarray  # (n_out, taps) float64, normalised, 0 beyond count
    fixed: np.ndarray  # (n_out, taps) int32, the weights in 22-bit fixed point (uint8 images)

    def rows_needed(self, start: int, stop: int) -> tuple[int, int]:
        """The input range read by outputs [start, stop)."""
        return int(self.first[start]), int(self.first[stop - 1] + self.count[stop - 1])


def axis_taps(n_in: int, n_out: int) -> AxisTaps:
    """Pillow's ``precompute_coeffs`` for the bilinear filter, in the same double arithmetic."""
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = filter_scale  # the bilinear filter's support is 1
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.arange(n_out) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) truncation
    last = np.minimum(np.trunc(center + support + 0.5), n_in).astype(np.int64)
    count = last - first
    index = first[:, None] + np.arange(taps)[None, :]
    weights = np.maximum(0.0, 1.0 - np.abs((index - center[:, None] + 0.5) * (1.0 / filter_scale)))
    weights[np.arange(taps)[None, :] >= count[:, None]] = 0.0
    total = np.zeros(n_out)
    for tap in range(taps):  # a sequential sum, as Pillow (numpy's sum is pairwise)
        total += weights[:, tap]
    weights /= np.where(total == 0.0, 1.0, total)[:, None]
    fixed = np.trunc(weights * (1 << PRECISION_BITS) + 0.5).astype(np.int32)
    return AxisTaps(first, count, weights, fixed)


def vertical_pass_uint8(rows: np.ndarray, taps: AxisTaps, start: int, stop: int, offset: int) -> np.ndarray:
    """Outputs [start, stop) of a vertical uint8 pass from input rows ``offset...`` (h, w, 3) -> (stop-start, w, 3)."""
    total = np.full((stop - start, *rows.shape[1:]), 1 << (PRECISION_BITS - 1), dtype=np.int32)
    index = taps.first[start:stop] - offset
    for tap in range(taps.fixed.shape[1]):
        weight = taps.fixed[start:stop, tap]
        if weight.any():
            total += weight[:, None, None] * rows[np.minimum(index + tap, len(rows) - 1)].astype(np.int32)
    return np.clip(total >> PRECISION_BITS, 0, 255).astype(np.uint8)


def vertical_pass_float(rows: np.ndarray, taps: AxisTaps, start: int, stop: int, offset: int) -> np.ndarray:
    """Outputs [start, stop) of a vertical float32 pass: double sums in tap order, stored as float32."""
    total = np.zeros((stop - start, rows.shape[1]), dtype=np.float64)
    product = np.empty_like(total)
    index = taps.first[start:stop] - offset
    for tap in range(taps.weights.shape[1]):
        used = taps.count[start:stop] > tap
        if used.all():  # float32 value * double weight, in double (what Pillow computes)
            total += np.multiply(rows[index + tap], taps.weights[start:stop, tap, None], out=product)
        elif used.any():
            total[used] += rows[index[used] + tap].astype(np.float64) * taps.weights[start:stop, tap][used, None]
    return total.astype(np.float32)


def horizontal_pass(rows: np.ndarray, width: int) -> np.ndarray:
    """A horizontal-only Pillow bilinear resize of a few rows (uint8 RGB or float32 mode "F")."""
    if rows.shape[1] == width:
        return rows
    resized = Image.fromarray(np.ascontiguousarray(rows)).resize((width, len(rows)), Image.BILINEAR)
    return np.asarray(resized, dtype=rows.dtype)


def _strip_outputs(n_out: int, in_rows_per_out: float, row_bytes: int) -> int:
    return max(1, int(STRIP_BYTES / (max(in_rows_per_out, 1.0) * max(row_bytes, 1))))


def resample_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 -> size[0] x size[1] x 3 uint8 by Pillow's bilinear rule, horizontal pass first,
    in row strips (about STRIP_BYTES of input rows at a time)."""
    (height, width), (out_h, out_w) = rgb.shape[:2], size
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    step = _strip_outputs(out_h, height / out_h, 4 * width)
    if out_h == height:  # the horizontal pass alone (or none), strip by strip
        for start in range(0, out_h, step):
            out[start:start + step] = horizontal_pass(rgb[start:start + step], out_w)
        return out
    taps = axis_taps(height, out_h)
    for start in range(0, out_h, step):
        stop = min(start + step, out_h)
        low, high = taps.rows_needed(start, stop)
        out[start:stop] = vertical_pass_uint8(horizontal_pass(rgb[low:high], out_w), taps, start, stop, low)
    return out


def resized_strips(probability: np.ndarray, size: tuple[int, int]) -> Iterator[tuple[slice, np.ndarray]]:
    """(row slice, float32 rows) of one (h, w) map resized to ``size`` by the float32 bilinear rule,
    horizontal pass first, in strips of about STRIP_BYTES of output."""
    (height, width), (out_h, out_w) = probability.shape, size
    step = _strip_outputs(out_h, 1.0, 40 * out_w)  # double sum and product, float32 rows: ~40 bytes a pixel
    if out_h == height:
        for start in range(0, out_h, step):
            yield slice(start, min(start + step, out_h)), horizontal_pass(probability[start:start + step], out_w)
        return
    taps = axis_taps(height, out_h)
    for start in range(0, out_h, step):
        stop = min(start + step, out_h)
        low, high = taps.rows_needed(start, stop)
        yield slice(start, stop), vertical_pass_float(horizontal_pass(probability[low:high], out_w), taps, start, stop, low)
