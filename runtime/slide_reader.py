"""Whole-slide readers: pyramid levels, microns per pixel and lazily read regions (docs/slides.md).

A slide (Aperio ``.svs``, a generic tiled pyramidal TIFF, an OME-TIFF) is opened with tiffslide,
which parses the pyramid through tifffile and exposes each level as a zarr array of tiles: a
region read decodes only the tiles it touches, never a whole level. A generic or OME TIFF holding
several images (a label or overview image first, then the slide) is read from its largest image,
not tiffslide's first. The slide's resolution comes from its metadata, in this order: Aperio's
``MPP`` in the description, OME ``PhysicalSizeX/Y`` of the image read, a Philips or Leica record as
tiffslide parses it, then the TIFF resolution tags of that image; a level's mpp is level 0's times
the level's downsample along each axis (its size ratio, as OpenSlide). A slide without any, or
whose only resolution is a desktop default (72/96/150/300 pixels per inch), whose recorded value is
not a positive number, or finer than :data:`~mrdl_runtime.slide_resolution.MIN_MPP` (a unit mix-up) is refused unless the caller
gives ``mpp``: nothing runs at a guessed scale. The image's layout comes from tifffile's axes of it
(:data:`READABLE_LAYOUTS`: grey, RGB(A) interleaved or planar-separate, three channel planes). Pixels
other than 8-bit RGB or grey are refused when the slide is opened; a tile that fails to decode later
is a :class:`SlideError` naming the level and the tile, whichever codec failed. The metadata readers
are :mod:`mrdl_runtime.slide_resolution`; :class:`SlideError` lives in :mod:`mrdl_runtime.errors` and is
importable from here as before.

Needs the ``slide`` extra (``pip install 'mrdl[slide]'``: tiffslide, tifffile, imagecodecs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import SlideError
from .slide_resolution import (aperio_mpp, check_fine_enough_to_be_real, ome_mpp, ome_mpp_unused, positive,
                               tag_mpp)

MPP_RELATIVE_TOLERANCE = 0.05  # a level up to 5 % coarser than needed still counts as fine enough

SUPPORTED_PHOTOMETRIC = ("RGB", "YCBCR", "MINISBLACK")  # brightfield colour, and grey (read as RGB)
# Formats whose slide image tiffslide finds itself (Aperio's baseline is series 0 by definition, Leica's is
# named in its XML); in the others (generic, OME, ...) it reads series 0, which may be a label image.
_VENDORS_WITH_THEIR_OWN_IMAGE = ("aperio", "leica")


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


# The layouts read as a slide (tifffile's axes, length-1 axes dropped) and the channel counts each may hold:
# Y rows, X columns, S a pixel's samples (interleaved YXS, or planar-separate SYX: RGB, RGBA whose alpha is
# dropped), C channels stored as separate grey planes (an OME-TIFF's CYX: three are read as R, G, B).
READABLE_LAYOUTS = {"YX": (1,), "YXS": (3, 4), "SYX": (3, 4), "CYX": (3,)}


def _channels(series) -> int:
    """The channels (samples, or channel planes) per pixel of ``series``: 1 without an S or C axis."""
    axes = str(series.axes)
    channel_axes = [index for index, axis in enumerate(axes) if axis in "SC"]
    return int(np.prod([series.shape[index] for index in channel_axes])) if channel_axes else 1


def _image_pixels(series) -> int:
    """Level-0 pixels (rows x columns) of an image series; 0 for a series without both a Y and an X axis."""
    axes = str(series.axes)
    if "Y" not in axes or "X" not in axes:
        return 0
    return int(series.shape[axes.index("Y")] * series.shape[axes.index("X")])


def layout_problem(series) -> str | None:
    """Why ``series`` cannot be read as a brightfield slide (its axes or channel count), or None when it can.
    Decided from tifffile's axes of the series, never guessed from its shape."""
    axes, channels = str(series.axes), _channels(series)
    expected = "expected an RGB, RGBA or grey brightfield image"
    if axes not in READABLE_LAYOUTS:
        return (f"the slide's image has axes {axes} (shape {tuple(series.shape)}), not one 2-D picture; {expected} "
                f"(tifffile axes {', '.join(READABLE_LAYOUTS)}): save the plane to segment as its own RGB TIFF")
    if channels not in READABLE_LAYOUTS[axes]:
        kind = "channel planes" if "C" in axes else "samples per pixel"
        return (f"the slide's image holds {channels} {kind} (axes {axes}), as a fluorescence or multiplex image does; "
                f"{expected} ({' or '.join(map(str, READABLE_LAYOUTS[axes]))} {kind} in this layout): "
                "convert the slide to RGB")
    return None


def largest_image(series_list, default: int) -> int:
    """The index of the series with the most level-0 pixels (the first of equals), whatever its layout: a
    label or overview image stored first is never taken for the slide, and a main image that cannot be read
    is refused (:func:`layout_problem`), not replaced by a smaller one. ``default`` when no series is an image."""
    candidates = [(index, _image_pixels(series)) for index, series in enumerate(series_list)]
    candidates = [candidate for candidate in candidates if candidate[1] > 0]
    if not candidates:
        return default
    return max(candidates, key=lambda candidate: (candidate[1], -candidate[0]))[0]


class SlideReader:
    """An open slide: ``levels`` (finest first), ``mpp_source`` (where level 0's mpp came from, and which
    image was read when the file holds several), ``image`` (that image's index) and :meth:`read`, which
    returns an RGB uint8 region of one level. Use as a context manager.

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
            self._properties = self._read_properties()
            self.image = self._choose_image()
            self._series = self._slide.ts_tifffile.series[self.image]
            self.axes = str(self._series.axes)
            problem = layout_problem(self._series)
            self._arrays = [] if problem else self._level_arrays()
        except Exception as exc:  # tifffile/tiffslide raise many types for a file that is not a slide
            if isinstance(exc, MemoryError):
                raise
            raise SlideError(f"not a readable slide (SVS, pyramidal TIFF or OME-TIFF): {exc}", slide=self.path) from exc
        self._channels_first = self.axes[0] in "SC"  # (channels, rows, columns): SYX, CYX
        try:
            if problem:
                raise SlideError(problem)
            self._check_pixels()
            base_mpp, self.mpp_source = self._level0_mpp(mpp)
        except SlideError as exc:
            self._slide.close()
            if exc.slide is None:
                raise SlideError(exc.reason, slide=self.path) from None
            raise
        (height0, width0) = self._shape(0)
        self.levels = tuple(SlideLevel(index, self._shape(index),
                                       (base_mpp[0] * height0 / self._shape(index)[0],
                                        base_mpp[1] * width0 / self._shape(index)[1]))
                            for index in range(len(self._arrays)))
        self._held: tuple[int, int, int, np.ndarray] | None = None  # (level, first row, stop row, rows) of rows()
        self.largest_read = 0  # the most pixels one region read has decoded (tests bound it)

    def _read_properties(self) -> dict:
        """tiffslide's properties; for a file whose first image tiffslide cannot describe (planar-separate
        RGB, axes SYX, or a stack), only the format, from tifffile: this reader then reads the image itself."""
        try:
            return dict(self._slide.properties)
        except NotImplementedError:
            self._tiffslide_reads = False
            return {"tiffslide.vendor": "aperio" if self._slide.ts_tifffile.is_svs else None}

    _tiffslide_reads = True  # whether tiffslide describes the file's first image (its zarr group can be used)

    def _tiffslide_image(self) -> int:
        return int(self._properties.get("tiffslide.series-index") or 0)

    def _picks_largest_image(self) -> bool:
        return self._properties.get("tiffslide.vendor") not in _VENDORS_WITH_THEIR_OWN_IMAGE

    def _choose_image(self) -> int:
        """The series to read. tiffslide reads series 0 of a generic or OME TIFF, which some converters fill
        with a label or overview image, so there the largest image is the slide; the formats of
        :data:`_VENDORS_WITH_THEIR_OWN_IMAGE` keep tiffslide's choice."""
        if not self._picks_largest_image():
            return self._tiffslide_image()
        return largest_image(self._slide.ts_tifffile.series, self._tiffslide_image())

    def _level_arrays(self) -> list:
        """The zarr array of each level of the image read: tiffslide's when it reads that image; otherwise
        (tiffslide cannot be told which series to read, or cannot describe the file's first image)
        tifffile's zarr store of the series, as tiffslide opens it (a single-level series is one array,
        a pyramid a group of levels "0", "1", ...)."""
        if self._tiffslide_reads and self.image == self._tiffslide_image():
            group = self._slide.zarr_group
            return [group[str(index)] for index in range(self._slide.level_count)]
        import zarr

        opened = zarr.open(self._series.aszarr(), mode="r")
        if isinstance(opened, zarr.Array):
            return [opened]
        return [opened[str(index)] for index in range(len(self._series.levels))]

    def _check_pixels(self) -> None:
        """Refuse, before any work, a slide whose pixels are not 8-bit RGB or grey: the model was trained
        on brightfield RGB, and palette, CMYK or 16-bit samples would be read as garbage colours."""
        for index, array in enumerate(self._arrays):
            if array.dtype != np.uint8:
                raise SlideError(f"level {index} holds {array.dtype} pixels; expected 8-bit RGB (brightfield)",
                                 slide=self.path)
        for index, level in enumerate(self._series.levels[:len(self._arrays)]):
            keyframe = getattr(level, "keyframe", None)
            photometric = getattr(getattr(keyframe, "photometric", None), "name", None)
            if photometric is not None and photometric not in SUPPORTED_PHOTOMETRIC:
                raise SlideError(f"level {index} has photometric interpretation {photometric}; expected RGB "
                                 "(or YCbCr, or grey MINISBLACK) brightfield pixels: convert the slide to RGB",
                                 slide=self.path)

    def tile_height(self, level: int) -> int:
        """The height of ``level``'s tiles (or strips): the rows one decode step yields."""
        chunks = self._arrays[level].chunks
        return int(chunks[1] if self._channels_first else chunks[0])

    def _shape(self, level: int) -> tuple[int, int]:
        shape = self._arrays[level].shape
        return (shape[1], shape[2]) if self._channels_first else (shape[0], shape[1])

    def _level0_mpp(self, override: float | tuple[float, float] | None) -> tuple[tuple[float, float], str]:
        """Level 0's (y, x) mpp and where it came from: ``override`` (--mpp), else the file's metadata; a value
        finer than :data:`~mrdl_runtime.slide_resolution.MIN_MPP` is refused either way. Names the image read when the file holds several."""
        if override is not None:
            pair = (override, override) if isinstance(override, (int, float)) else tuple(override)
            if len(pair) != 2 or any(positive(value) is None for value in pair):
                raise SlideError(f"mpp must be a positive number of microns per pixel (or (y, x)), got {override!r}")
            mpp, source = (float(pair[0]), float(pair[1])), "--mpp"
        else:
            mpp, source = self._file_mpp()
        check_fine_enough_to_be_real(mpp, source)
        images = len(self._slide.ts_tifffile.series)
        if images > 1 and self._picks_largest_image():
            source += f", image {self.image} of {images}"
        return mpp, source

    def _file_mpp(self) -> tuple[tuple[float, float], str]:
        """Level 0's mpp from the most trusted record the file has: Aperio's MPP (the scanner's own), OME
        PhysicalSize of the image read (a converter or editor may leave 72 dpi tags beside it), a vendor
        format's own record as tiffslide parses it (Philips, Leica), and last the image's TIFF tags."""
        tiff, properties = self._slide.ts_tifffile, self._properties
        vendor = properties.get("tiffslide.vendor")
        if vendor == "aperio":
            aperio = aperio_mpp(self._series.keyframe.description)
            if aperio is not None:
                return (aperio, aperio), "Aperio MPP"
        ome = ome_mpp(getattr(tiff, "ome_metadata", None), self.image, self._shape(0))
        if ome is not None:
            return ome, "OME PhysicalSize"
        x, y = positive(properties.get("tiffslide.mpp-x")), positive(properties.get("tiffslide.mpp-y"))
        vendor_record = (tiff.is_philips or tiff.is_scn) and self.image == self._tiffslide_image()
        if vendor_record and x is not None and y is not None:
            return (y, x), f"{vendor} metadata"
        tags = tag_mpp(self._series.keyframe)
        if tags is not None:
            return tags, "TIFF resolution tags"
        advice = "give it with --mpp MICRONS_PER_PIXEL (e.g. --mpp 0.25 for a 40x scan)"
        unused = ome_mpp_unused(getattr(tiff, "ome_metadata", None), self.image, self._shape(0))
        if unused is not None:
            raise SlideError(f"the slide records no usable resolution: {unused} (and no Aperio MPP or TIFF "
                             f"resolution tags); {advice}", slide=self.path)
        raise SlideError("the slide records no resolution (no Aperio MPP, OME PhysicalSize or TIFF resolution "
                         f"tags); {advice}", slide=self.path)

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
        if self._channels_first:
            region = region.transpose(1, 2, 0)  # (channels, rows, columns) -> (rows, columns, channels)
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
        return array[:, r0:r1, c0:c1] if self._channels_first else array[r0:r1, c0:c1]

    def _failing_tile(self, level: int, rows: tuple[int, int], columns: tuple[int, int]) -> tuple[int, int] | None:
        """The first tile of the region that fails to decode alone, as its (y, x) corner in level pixels;
        None when each decodes (the failure was elsewhere). Only run after a failure."""
        chunks = self._arrays[level].chunks
        tile_h, tile_w = (chunks[1], chunks[2]) if self._channels_first else (chunks[0], chunks[1])
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
