"""Pyramidal, tiled, deflate-compressed OME-TIFF from rows read on demand (docs/slides.md).

Level 0 is written by tifffile from a generator of tiles, one tile row at a time, so the full-size
image never exists in memory; each pyramid level is 4x smaller per axis than the one above (nearest
pixel, so a mask keeps its class values) and the first one is collected while level 0 streams
(area / 16 of level 0). The OME-XML and the TIFF resolution tags carry the physical pixel size, so
QuPath, napari (tifffile) and tiffslide place the image at the slide's scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from .atomic import atomic_path

TILE = 256
PYRAMID_FACTOR = 4
MIN_LEVEL_SIDE = 128  # no pyramid level whose shorter side would be below this


def pyramid_levels(size: tuple[int, int]) -> int:
    """How many reduced levels a (height, width) image gets: each 4x smaller, the shorter side >= 128."""
    count, side = 0, min(size)
    while side // PYRAMID_FACTOR >= MIN_LEVEL_SIDE:
        side //= PYRAMID_FACTOR
        count += 1
    return count


def write_ome_tiff(path: str | Path, read_rows: Callable[[int, int, int], np.ndarray], *, size: tuple[int, int],
                   planes: int, mpp: tuple[float, float], uuid: str, channel_names: list[str] | None = None,
                   on_rows: Callable[[int, np.ndarray], None] | None = None,
                   temporary_folder: str | Path | None = None) -> None:
    """Write ``planes`` uint8 planes of ``size`` (height, width) to ``path`` (through a temporary name,
    in ``temporary_folder`` when given, else beside ``path``; renamed once complete).

    ``read_rows(plane, first, stop)`` returns rows [first, stop) of one plane as (stop-first, width)
    uint8; ``on_rows(first, rows)`` (optional) sees plane 0's rows once, top to bottom, as they are
    written. ``mpp``: (y, x) microns per pixel of level 0; ``uuid``: the OME UUID (fixed by the caller so
    that the same input gives the same bytes).
    """
    import tifffile

    path = Path(path)
    height, width = size
    levels = pyramid_levels(size)
    reduced = np.zeros((planes, -(-height // PYRAMID_FACTOR), -(-width // PYRAMID_FACTOR)), dtype=np.uint8) \
        if levels else None

    def tiles():
        for plane in range(planes):
            for first in range(0, height, TILE):
                stop = min(first + TILE, height)
                rows = read_rows(plane, first, stop)  # (stop-first, width)
                if plane == 0 and on_rows is not None:
                    on_rows(first, rows)
                if reduced is not None:
                    offset = -first % PYRAMID_FACTOR  # the first row of this strip on the 4x grid
                    reduced[plane, (first + offset) // PYRAMID_FACTOR:(stop + PYRAMID_FACTOR - 1) // PYRAMID_FACTOR] = \
                        rows[offset::PYRAMID_FACTOR, ::PYRAMID_FACTOR]
                padded = np.zeros((TILE, -(-width // TILE) * TILE), dtype=np.uint8)
                padded[:stop - first, :width] = rows
                for column in range(0, width, TILE):
                    yield padded[:, column:column + TILE]

    shape = (height, width) if planes == 1 else (planes, height, width)
    metadata = {"axes": "YX" if planes == 1 else "CYX", "UUID": uuid,
                "PhysicalSizeY": mpp[0], "PhysicalSizeYUnit": "µm", "PhysicalSizeX": mpp[1], "PhysicalSizeXUnit": "µm"}
    if channel_names and planes > 1:
        metadata["Channel"] = {"Name": list(channel_names)}
    common = {"tile": (TILE, TILE), "compression": "zlib", "photometric": "minisblack", "resolutionunit": "CENTIMETER"}
    with atomic_path(path, folder=temporary_folder) as temporary, \
            tifffile.TiffWriter(temporary, bigtiff=True, ome=True) as writer:
        writer.write(tiles(), shape=shape, dtype=np.uint8, subifds=levels, metadata=metadata,
                     resolution=(1e4 / mpp[1], 1e4 / mpp[0]), **common)
        level = reduced
        for index in range(1, levels + 1):
            factor = PYRAMID_FACTOR ** index
            writer.write(level[0] if planes == 1 else level, subfiletype=1, metadata=None,
                         resolution=(1e4 / (mpp[1] * factor), 1e4 / (mpp[0] * factor)), **common)
            level = level[:, ::PYRAMID_FACTOR, ::PYRAMID_FACTOR]
