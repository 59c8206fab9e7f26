"""A picture of a whole-slide result: the slide's thumbnail with its mask tinted in, and a detail.

Reads the slide through tiffslide from the coarsest pyramid level that still has ``side`` pixels (in
row bands, subsampled to at most ``side``) and the mask OME-TIFF's level chosen alike through tifffile,
tints each class in as ``mrdl predict``'s overlays do (:func:`mrdl_runtime.files.tint`), and puts
beside it a full-resolution detail: a ``detail``-sided square of slide level-0 pixels around the
densest part of the mask (or a given centre), where single objects are visible. Nothing larger than one
level's row band and the picture itself is held in memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from .files import tint, write_png

BAND_ROWS = 512  # rows of the thumbnail's slide level read at a time
GAP = 8  # white pixels between the thumbnail and the detail


def _tiffslide():
    try:
        import tiffslide
    except ImportError as error:
        raise ImportError("slide overlays need tiffslide and tifffile: pip install 'mrdl[slide]'") from error
    return tiffslide


def _level_for(sizes: list[tuple[int, int]], side: int) -> int:
    """The coarsest level whose longer side still reaches ``side`` (level 0 when none does)."""
    reaching = [index for index, size in enumerate(sizes) if max(size) >= side]
    return reaching[-1] if reaching else 0


def _slide_thumbnail(slide, side: int) -> np.ndarray:
    """The slide as RGB from the level nearest above ``side``, every ``step``-th pixel so that its longer
    side is at most ``side``; read in bands of rows."""
    level = _level_for(list(slide.level_dimensions), side)
    width, height = slide.level_dimensions[level]
    step = max(1, math.ceil(max(width, height) / side))
    downsample = slide.level_downsamples[level]
    parts = []
    for first in range(0, height, BAND_ROWS):
        rows = min(BAND_ROWS, height - first)
        band = slide.read_region((0, round(first * downsample)), level, (width, rows), as_array=True)
        parts.append(band[-first % step::step, ::step, :3])
    return np.ascontiguousarray(np.concatenate(parts))


def _mask_overview(mask_path: Path, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The mask's pyramid level nearest above ``side`` (h, w) uint8, and the (height, width) of its level 0."""
    import tifffile

    with tifffile.TiffFile(mask_path) as tif:
        levels = tif.series[0].levels
        full = levels[0].shape
        level = _level_for([shape[-2:] for shape in (lv.shape for lv in levels)], side)
        overview = levels[level].asarray()
    if overview.ndim != 2 or overview.dtype != np.uint8:
        raise ValueError(f"{mask_path}: expected a one-plane uint8 class-index mask, got {overview.shape} "
                         f"{overview.dtype}")
    return overview, full[-2:]


def _densest_centre(coarse: np.ndarray, window: int) -> tuple[int, int]:
    """(row, column) in ``coarse`` of the ``window``-sided square holding the most foreground."""
    window = max(1, min(window, *coarse.shape))
    sums = np.pad((coarse > 0).astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    boxes = (sums[window:, window:] - sums[:-window, window:] - sums[window:, :-window] + sums[:-window, :-window])
    row, column = np.unravel_index(np.argmax(boxes), boxes.shape)
    return int(row) + window // 2, int(column) + window // 2


def _nearest(first: int, count: int, ratio: float, limit: int) -> np.ndarray:
    """Mask indices under level-0 pixels ``first .. first + count - 1`` (``ratio`` mask pixels per level-0 pixel)."""
    return np.minimum(((first + np.arange(count) + 0.5) * ratio).astype(np.int64), limit - 1)


def overlay_images(slide_path: str | Path, mask_path: str | Path, *, side: int = 1024, detail: int = 512,
                   centre: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(thumbnail, detail) RGB uint8 arrays with the mask tinted in. The thumbnail's longer side is at
    most ``side``; the detail is a ``detail``-sided square of slide level-0 pixels around ``centre``
    ((row, column) in level-0 pixels; default: the densest part of the mask), the mask scaled to it by
    nearest neighbour (a mask coarser than the slide shows its blocks). ``detail=0``: no detail."""
    tiffslide = _tiffslide()
    mask_path = Path(mask_path)
    overview, (mask_height, mask_width) = _mask_overview(mask_path, side)
    with tiffslide.TiffSlide(slide_path) as slide:
        thumbnail = _slide_thumbnail(slide, side)
        slide_width, slide_height = slide.dimensions
        if detail:
            rows, columns = min(detail, slide_height), min(detail, slide_width)
            if centre is None:
                per_row, per_column = slide_height / overview.shape[0], slide_width / overview.shape[1]
                row, column = _densest_centre(overview, max(1, round(detail / per_row)))
                centre = (round(row * per_row), round(column * per_column))
            top = min(max(centre[0] - rows // 2, 0), slide_height - rows)
            left = min(max(centre[1] - columns // 2, 0), slide_width - columns)
            region = slide.read_region((left, top), 0, (columns, rows), as_array=True)[..., :3]
    shown = np.asarray(Image.fromarray(overview).resize(thumbnail.shape[1::-1], Image.NEAREST))
    thumbnail = tint(np.array(thumbnail), shown)
    if not detail:
        return thumbnail, None
    mask_rows = _nearest(top, rows, mask_height / slide_height, mask_height)
    mask_columns = _nearest(left, columns, mask_width / slide_width, mask_width)
    with tiffslide.TiffSlide(mask_path) as mask_slide:
        labels = mask_slide.read_region((int(mask_columns[0]), int(mask_rows[0])), 0,
                                        (int(mask_columns[-1] - mask_columns[0]) + 1,
                                         int(mask_rows[-1] - mask_rows[0]) + 1), as_array=True)[..., 0]
    labels = labels[(mask_rows - mask_rows[0])[:, None], (mask_columns - mask_columns[0])[None, :]]
    return thumbnail, tint(np.array(region), labels)


def write_slide_overlay(slide_path: str | Path, mask_path: str | Path, out_png: str | Path, *, side: int = 1024,
                        detail: int = 512, centre: tuple[int, int] | None = None, colours: int | None = None) -> Path:
    """Write the thumbnail (and the detail to its right, if ``detail``) as one PNG; returns its path.
    ``colours``: quantize to a palette of that many colours (a smaller file for documentation)."""
    if colours is not None and not 2 <= colours <= 256:
        raise ValueError(f"colours must be a palette size in [2, 256], got {colours}")
    thumbnail, zoomed = overlay_images(slide_path, mask_path, side=side, detail=detail, centre=centre)
    picture = thumbnail
    if zoomed is not None:
        height = max(thumbnail.shape[0], zoomed.shape[0])
        picture = np.full((height, thumbnail.shape[1] + GAP + zoomed.shape[1], 3), 255, np.uint8)
        picture[:thumbnail.shape[0], :thumbnail.shape[1]] = thumbnail
        picture[:zoomed.shape[0], thumbnail.shape[1] + GAP:] = zoomed
    if colours is None:
        write_png(picture, Path(out_png))
        return Path(out_png)
    out_png = Path(out_png)
    temporary = out_png.with_name(f".{out_png.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(picture).quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            temporary, format="PNG", optimize=True)
        os.replace(temporary, out_png)
    finally:
        temporary.unlink(missing_ok=True)
    return out_png
