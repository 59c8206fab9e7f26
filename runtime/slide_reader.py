"""Whole-slide readers: pyramid levels, microns per pixel and lazily read regions (docs/slides.md).

A slide (Aperio ``.svs``, a generic tiled pyramidal TIFF, an OME-TIFF) is opened with tiffslide,
which parses the pyramid through tifffile and exposes each level as a zarr array of tiles: a
region read decodes only the tiles it touches, never a whole level. The slide's resolution comes
from its metadata, in this order: Aperio's ``MPP`` in the description and the TIFF resolution tags
(tiffslide's ``tiffslide.mpp-x/y``), then OME ``PhysicalSizeX/Y`` (tifffile's OME-XML); a level's
mpp is level 0's times the level's downsample along each axis (its size ratio, as OpenSlide).
A slide without any is refused unless the caller gives ``mpp``: nothing runs at a guessed scale.
Pixels other than 8-bit RGB or grey are refused when the slide is opened; a tile that fails to
decode later is a :class:`SlideError` naming the level and the tile, whichever codec failed.

Needs the ``slide`` extra (``pip install 'mrdl[slide]'``: tiffslide, tifffile, imagecodecs).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import MrdlError

MPP_RELATIVE_TOLERANCE = 0.05  # a level up to 5 % coarser than needed still counts as fine enough
_OME_UNITS_IN_MICRONS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


SUPPORTED_PHOTOMETRIC = ("RGB", "YCBCR", "MINISBLACK")  # brightfield colour, and grey (read as RGB)


class SlideError(MrdlError, ValueError):
    """A slide that cannot be segmented as asked: unreadable, no resolution, no level fine enough.

    ``reason`` is the message without the slide's path; ``str()`` puts ``slide`` (when given) in
    front, so a caller that prints the path itself (``failed: PATH: ...``) prints ``reason`` alone.
    """

    def __init__(self, reason: str, *, slide: str | Path | None = None) -> None:
        self.reason, self.slide = reason, slide
        super().__init__(reason if slide is None else f"{slide}: {reason}")


@dataclass(frozen=True)
class SlideLevel:
    """One pyramid level: its index, (height, width) in pixels and (y, x) microns per pixel."""

    index: int
    size: tuple[int, int]
    mpp: tuple[float, float]


def _import_tiffslide():
    try:
        import tiffslide
    except ImportError as exc:
        raise ImportError("whole-slide images need mrdl's 'slide' extra (tiffslide, tifffile, imagecodecs); "
                          "add it with: pip install 'mrdl[slide]'") from exc
    return tiffslide


def _positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def ome_mpp(ome_xml: str | None) -> tuple[float, float] | None:
    """(y, x) microns per pixel from the first OME ``Pixels`` element's PhysicalSizeY/X (with their units)."""
    if not ome_xml:
        return None
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    pixels = next((element for element in root.iter() if element.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        size = _positive(pixels.get(f"PhysicalSize{axis}"))
        unit = _OME_UNITS_IN_MICRONS.get(pixels.get(f"PhysicalSize{axis}Unit", "µm"))
        if size is None or unit is None:
            return None
        sizes.append(size * unit)
    return sizes[0], sizes[1]


def aperio_mpp(description: str | None) -> float | None:
    """The ``MPP = 0.2520`` field of an Aperio ImageDescription, or None."""
    found = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    return _positive(found.group(1)) if found else None


class SlideReader:
    """An open slide: ``levels`` (finest first), ``mpp_source`` (where level 0's mpp came from) and
    :meth:`read`, which returns an RGB uint8 region of one level. Use as a context manager.

    ``mpp``: (y, x) or one number, microns per pixel of level 0, overriding (and needed without)
    the file's metadata.
    """

    def __init__(self, path: str | Path, *, mpp: float | tuple[float, float] | None = None) -> None:
        tiffslide = _import_tiffslide()
        self.path = Path(path)
        if not self.path.is_file():
            raise SlideError("no such slide file", slide=self.path)
        try:
            self._slide = tiffslide.TiffSlide(str(self.path))
            group = self._slide.zarr_group
            self._arrays = [group[str(index)] for index in range(self._slide.level_count)]
        except Exception as exc:  # tifffile/tiffslide raise many types for a file that is not a slide
            if isinstance(exc, MemoryError):
                raise
            raise SlideError(f"not a readable slide (SVS, pyramidal TIFF or OME-TIFF): {exc}", slide=self.path) from exc
        self.axes = str(self._slide.properties.get("tiffslide.series-axes") or "YXS")
        try:
            self._check_pixels()
            base_mpp, self.mpp_source = self._level0_mpp(mpp)
        except SlideError:
            self._slide.close()
            raise
        (height0, width0) = self._shape(0)
        self.levels = tuple(SlideLevel(index, self._shape(index),
                                       (base_mpp[0] * height0 / self._shape(index)[0],
                                        base_mpp[1] * width0 / self._shape(index)[1]))
                            for index in range(len(self._arrays)))
        self._held: tuple[int, int, int, np.ndarray] | None = None  # (level, first row, stop row, rows) of rows()
        self.largest_read = 0  # the most pixels one region read has decoded (tests bound it)

    def _check_pixels(self) -> None:
        """Refuse, before any work, a slide whose pixels are not 8-bit RGB or grey: the model was trained
        on brightfield RGB, and palette, CMYK or 16-bit samples would be read as garbage colours."""
        for index, array in enumerate(self._arrays):
            if array.dtype != np.uint8:
                raise SlideError(f"level {index} holds {array.dtype} pixels; expected 8-bit RGB (brightfield)",
                                 slide=self.path)
        series = self._slide.ts_tifffile.series[int(self._slide.properties.get("tiffslide.series-index") or 0)]
        for index, level in enumerate(series.levels[:len(self._arrays)]):
            keyframe = getattr(level, "keyframe", None)
            photometric = getattr(getattr(keyframe, "photometric", None), "name", None)
            if photometric is not None and photometric not in SUPPORTED_PHOTOMETRIC:
                raise SlideError(f"level {index} has photometric interpretation {photometric}; expected RGB "
                                 "(or YCbCr, or grey MINISBLACK) brightfield pixels: convert the slide to RGB",
                                 slide=self.path)
            samples = getattr(keyframe, "samplesperpixel", 3)
            if samples not in (1, 3, 4):
                raise SlideError(f"level {index} has {samples} samples per pixel; expected 3 (RGB), 4 (RGBA) or "
                                 "1 (grey)", slide=self.path)

    def tile_height(self, level: int) -> int:
        """The height of ``level``'s tiles (or strips): the rows one decode step yields."""
        chunks = self._arrays[level].chunks
        return int(chunks[1] if self.axes.startswith("S") else chunks[0])

    def _shape(self, level: int) -> tuple[int, int]:
        shape = self._arrays[level].shape
        return (shape[1], shape[2]) if self.axes.startswith("S") else (shape[0], shape[1])

    def _level0_mpp(self, override: float | tuple[float, float] | None) -> tuple[tuple[float, float], str]:
        if override is not None:
            pair = (override, override) if isinstance(override, (int, float)) else tuple(override)
            if len(pair) != 2 or any(_positive(value) is None for value in pair):
                raise SlideError(f"mpp must be a positive number of microns per pixel (or (y, x)), got {override!r}")
            return (float(pair[0]), float(pair[1])), "--mpp"
        properties = self._slide.properties
        x, y = _positive(properties.get("tiffslide.mpp-x")), _positive(properties.get("tiffslide.mpp-y"))
        if x is not None and y is not None:
            vendor = properties.get("tiffslide.vendor")
            return (y, x), "Aperio MPP" if vendor == "aperio" else "TIFF resolution tags"
        ome = ome_mpp(getattr(self._slide.ts_tifffile, "ome_metadata", None))
        if ome is not None:
            return ome, "OME PhysicalSize"
        raise SlideError("the slide records no resolution (no Aperio MPP, OME PhysicalSize or TIFF resolution "
                         "tags); give it with --mpp MICRONS_PER_PIXEL (e.g. --mpp 0.25 for a 40x scan)",
                         slide=self.path)

    def read(self, level: int, rows: tuple[int, int], columns: tuple[int, int]) -> np.ndarray:
        """Rows [r0, r1) and columns [c0, c1) of ``level`` (inside it) -> (r1-r0, c1-c0, 3) uint8 RGB;
        only the tiles that overlap the region are decoded."""
        (r0, r1), (c0, c1) = rows, columns
        height, width = self.levels[level].size
        if not (0 <= r0 < r1 <= height and 0 <= c0 < c1 <= width):
            raise SlideError(f"region rows {rows} columns {columns} is outside level {level} ({height}x{width})",
                             slide=self.path)
        self.largest_read = max(self.largest_read, (r1 - r0) * (c1 - c0))
        region = self._decode(level, rows, columns)
        if self.axes.startswith("S"):
            region = region.transpose(1, 2, 0)
        if region.ndim == 2:
            region = region[:, :, None]
        if region.dtype != np.uint8:
            raise SlideError(f"level {level} holds {region.dtype} pixels; expected 8-bit RGB (brightfield)",
                             slide=self.path)
        if region.shape[2] == 1:
            return np.repeat(region, 3, axis=2)
        return np.ascontiguousarray(region[:, :, :3])  # an alpha channel is dropped

    def _decode(self, level: int, rows: tuple[int, int], columns: tuple[int, int]) -> np.ndarray:
        """The stored samples of a region, its tiles decoded. A tile that fails to decode (corrupt or
        truncated file: each codec, zarr and the file layer raise their own types) becomes a
        :class:`SlideError` naming the level and the tile, so one bad slide fails alone; running
        out of memory and interruptions are not decoding errors and pass through."""
        try:
            return np.asarray(self._region(level, rows, columns))
        except (MemoryError, SlideError):
            raise
        except Exception as exc:
            tile = self._failing_tile(level, rows, columns)
            where = f"level {level}" + ("" if tile is None else f", the tile at y={tile[0]} x={tile[1]}")
            raise SlideError(f"cannot decode {where} (a corrupt or truncated file?): {type(exc).__name__}: {exc}",
                             slide=self.path) from exc

    def _region(self, level: int, rows: tuple[int, int], columns: tuple[int, int]):
        """The zarr selection of a region (decoded when turned into an array)."""
        (r0, r1), (c0, c1) = rows, columns
        array = self._arrays[level]
        return array[:, r0:r1, c0:c1] if self.axes.startswith("S") else array[r0:r1, c0:c1]

    def _failing_tile(self, level: int, rows: tuple[int, int], columns: tuple[int, int]) -> tuple[int, int] | None:
        """The first tile of the region that fails to decode alone, as its (y, x) corner in level pixels;
        None when each decodes (the failure was elsewhere). Only run after a failure."""
        chunks = self._arrays[level].chunks
        tile_h, tile_w = (chunks[1], chunks[2]) if self.axes.startswith("S") else (chunks[0], chunks[1])
        height, width = self.levels[level].size
        for top in range(rows[0] // tile_h * tile_h, rows[1], tile_h):
            for left in range(columns[0] // tile_w * tile_w, columns[1], tile_w):
                try:
                    np.asarray(self._region(level, (top, min(top + tile_h, height)), (left, min(left + tile_w, width))))
                except MemoryError:
                    raise
                except Exception:
                    return top, left
        return None

    def rows(self, level: int, first: int, stop: int) -> np.ndarray:
        """Full-width rows [first, stop) of ``level`` -> (stop-first, W, 3) uint8, read in whole tile rows.

        Consecutive calls walk down the level: the tile rows decoded last are kept and reused, so each
        tile is decoded once however the requests overlap (a band's rows rarely align with tiles). One
        region read holds at most the requested rows plus a tile row above and below.
        """
        height, width = self.levels[level].size
        tile = self.tile_height(level)
        block_first, block_stop = first // tile * tile, min(-(-stop // tile) * tile, height)
        held = self._held
        if held is not None and held[0] == level and held[1] <= block_first < held[2]:
            kept = held[3][block_first - held[1]:]  # a view of the rows already decoded
            start = held[2]
        else:
            kept, start = None, block_first
        parts = [] if kept is None else [kept]
        if start < block_stop:
            parts.append(self.read(level, (start, block_stop), (0, width)))
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._held = (level, block_first, block_first + len(block), block)
        return block[first - block_first:stop - block_first]

    def close(self) -> None:
        """Close the file."""
        self._slide.close()

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def choose_level(levels: tuple[SlideLevel, ...], target_mpp: tuple[float, float],
                 tolerance: float = MPP_RELATIVE_TOLERANCE) -> SlideLevel:
    """The coarsest level still at least as fine as ``target_mpp`` (y, x), up to ``tolerance``
    (relative): its mpp <= target * (1 + tolerance) on both axes. The rest of the way is resampled.
    A slide whose finest level is coarser than that is refused: upsampling would invent detail."""
    fine_enough = [level for level in levels
                   if all(have <= want * (1.0 + tolerance) for have, want in zip(level.mpp, target_mpp))]
    if not fine_enough:
        finest = levels[0]
        raise SlideError(f"the slide's finest level has {finest.mpp[1]:.4g} um/px, coarser than the model's "
                         f"{target_mpp[1]:.4g} um/px (its training resolution); a slide scanned at higher "
                         "magnification is needed (or correct the slide's resolution with --mpp)")
    return max(fine_enough, key=lambda level: level.mpp[0] * level.mpp[1])
