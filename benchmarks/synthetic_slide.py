"""Synthetic whole-slide images: MoNuSeg crops as tissue islands on a white canvas, in bounded memory.

A test slide for ``mrdl predict-slide`` is built from data we have: 1000x1000 40x H&E crops (MoNuSeg,
or a procedural H&E-like texture with nuclei when no MoNuSeg folder is given) placed on cells of a
grid over a white canvas, the chosen cells clustered into islands until the requested tissue
fraction is covered. The slide is written with tifffile from a tile iterator, one row of tiles at a
time, so a 60,000 x 60,000 slide never holds more than one tile row of any level:

* ``svs``: Aperio layout (tiled level 0 with the ``Aperio Image Library`` description carrying
  ``AppMag`` and ``MPP``, a stripped thumbnail, tiled levels downsampled ``downsample``x each), which
  tiffslide reads with its microns per pixel;
* ``ome-tiff``: a pyramidal OME-TIFF (levels in SubIFDs, ``PhysicalSizeX/Y`` in um, TIFF resolution).

Beside the slide, ``<slide>.placements.json`` lists where each crop sits (level-0 pixels), its source
image and ground-truth mask (or the procedural seed), so parity tests can compare crop by crop::

    python -m mrdl_bench.synthetic_slide OUT.svs --size 20000 --monuseg PATH/TO/MoNuSeg
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

KINDS = ("svs", "ome-tiff")
COMPRESSIONS = ("jpeg", "zlib")
BACKGROUND = (243, 243, 243)  # a scanner's white glass
PROCEDURAL_POOL = 8  # distinct procedural crops, reused in turn
THUMBNAIL_SIDE = 1024
SPLITS = ("Train_Folder", "Val_Folder")


@dataclass(frozen=True)
class SlideOptions:
    """What to build: size in level-0 pixels, tissue, resolution and file layout."""

    width: int = 2048
    height: int = 2048
    tissue_fraction: float = 0.4
    mpp: float = 0.25  # microns per level-0 pixel (MoNuSeg is 40x, ~0.25 um/px)
    magnification: int = 40
    kind: str = "svs"
    compression: str = "jpeg"
    quality: int = 90  # JPEG quality
    tile: int = 256
    downsample: int = 4  # between pyramid levels
    max_levels: int = 4
    min_level_side: int = 64
    crop: int = 1000  # side of a placed crop (<= the source images' side)
    seed: int = 0
    monuseg: str | None = None  # MoNuSeg folder ({Train,Val}_Folder/{img,labelcol}); None: procedural crops

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise ValueError(f"slide size must be positive, got {self.width}x{self.height}")
        if not 0 <= self.tissue_fraction <= 1:
            raise ValueError(f"tissue_fraction must be in [0, 1], got {self.tissue_fraction}")
        if self.kind not in KINDS or self.compression not in COMPRESSIONS:
            raise ValueError(f"kind must be one of {KINDS} and compression one of {COMPRESSIONS}, "
                             f"got {self.kind!r} / {self.compression!r}")
        if self.tile % 16 or self.downsample < 2 or self.crop < 1 or not self.mpp > 0:
            raise ValueError("tile must be a multiple of 16, downsample >= 2, crop >= 1 and mpp > 0")


@dataclass(frozen=True)
class Placement:
    """One crop on the slide: level-0 rectangle, and where its pixels come from."""

    x: int
    y: int
    width: int
    height: int
    image: str | None  # source image path (MoNuSeg), None for a procedural crop
    mask: str | None  # its ground-truth mask (0 background, 255 nucleus)
    source_x: int = 0  # the crop's offset inside the source image
    source_y: int = 0
    procedural_seed: int | None = None


@dataclass
class SyntheticSlide:
    """A built slide: its file, the placements file beside it, and what went into it."""

    path: Path
    placements_path: Path
    placements: list[Placement]
    level_shapes: list[tuple[int, int]]  # (height, width) per level
    source: str  # "MoNuSeg (<folder>)" or "procedural"
    tissue_fraction: float
    seconds: float = 0.0


def monuseg_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, ground-truth mask) pairs of a MoNuSeg folder, training then validation images."""
    pairs = []
    for split in SPLITS:
        for image in sorted((Path(folder) / split / "img").glob("*.png")):
            mask = Path(folder) / split / "labelcol" / image.name
            if mask.is_file():
                pairs.append((image, mask))
    if not pairs:
        raise FileNotFoundError(f"no MoNuSeg images under {folder} (expected {{Train,Val}}_Folder/{{img,labelcol}}/*.png)")
    return pairs


def procedural_crop(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An H&E-like (size, size, 3) uint8 crop: pink stroma texture with purple nuclei, and its 0/1 nuclei mask."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((size // 32 + 2, size // 32 + 2)).astype(np.float32)
    texture = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR))
    texture = texture + rng.normal(0, 0.08, (size, size)).astype(np.float32)
    stroma = np.array([232, 170, 205], np.float32) - 40 * texture[..., None] * np.array([0.3, 1.0, 0.6], np.float32)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[-12:13, -12:13]
    count = size * size // 2500  # about 400 nuclei in a 1000x1000 crop, as in MoNuSeg
    for cy, cx, ry, rx in zip(rng.integers(0, size, count), rng.integers(0, size, count),
                              rng.uniform(4, 11, count), rng.uniform(4, 11, count)):
        disk = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1
        y0, x0 = cy - 12, cx - 12
        ys, xs = slice(max(y0, 0), min(y0 + 25, size)), slice(max(x0, 0), min(x0 + 25, size))
        mask[ys, xs] |= disk[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
    nucleus = np.array([95, 60, 150], np.float32) + rng.normal(0, 10, 3).astype(np.float32)
    image = np.where(mask[..., None] > 0, nucleus + 15 * texture[..., None], stroma)
    return np.clip(image, 0, 255).astype(np.uint8), mask


@lru_cache(maxsize=64)
def _source(image: str | None, seed: int | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A whole source (image, 0/1 mask), cached: a slide reuses a bounded pool of sources."""
    if image is None:
        return procedural_crop(seed, size)
    pixels = np.asarray(Image.open(image).convert("RGB"))
    return pixels, np.zeros(0, np.uint8)


@lru_cache(maxsize=64)
def _truth(mask: str) -> np.ndarray:
    """A MoNuSeg ground-truth mask as 0/1, cached like the images."""
    return (np.asarray(Image.open(mask).convert("L")) > 127).astype(np.uint8)


def crop_pixels(placement: Placement) -> np.ndarray:
    """The (height, width, 3) uint8 pixels the slide holds at ``placement`` (level 0)."""
    size = None if placement.image else max(placement.width, placement.height)
    pixels = _source(placement.image, placement.procedural_seed, size)[0]
    return pixels[placement.source_y:placement.source_y + placement.height,
                  placement.source_x:placement.source_x + placement.width]


def crop_mask(placement: Placement) -> np.ndarray:
    """The crop's ground truth: (height, width) uint8, 1 where a nucleus is."""
    if placement.image is None:
        mask = _source(None, placement.procedural_seed, max(placement.width, placement.height))[1]
    else:
        mask = _truth(placement.mask)
    return mask[placement.source_y:placement.source_y + placement.height,
                placement.source_x:placement.source_x + placement.width]


@lru_cache(maxsize=256)
def _scaled_crop(placement: Placement, width: int, height: int) -> np.ndarray:
    """The crop resized to a lower level's (height, width) by area averaging."""
    return np.asarray(Image.fromarray(crop_pixels(placement)).resize((width, height), Image.BOX))


def layout(options: SlideOptions) -> list[Placement]:
    """Crops on a grid of ``crop``-sided cells, the cells chosen in islands to cover ``tissue_fraction``."""
    rng = np.random.default_rng(options.seed)
    if options.monuseg is not None:
        pairs = monuseg_pairs(options.monuseg)
        side = min(Image.open(pairs[0][0]).size)
        if options.crop > side:
            raise ValueError(f"crop {options.crop} is larger than the MoNuSeg images ({side})")
    rows, cols = options.height // options.crop, options.width // options.crop
    wanted = min(rows * cols, round(options.tissue_fraction * options.width * options.height / options.crop ** 2))
    if wanted == 0:
        return []
    field_ = rng.random((rows, cols))
    for _ in range(3):  # smoothing makes neighbouring cells alike: the chosen cells cluster into islands
        padded = np.pad(field_, 1, mode="edge")
        field_ = sum(padded[dy:dy + rows, dx:dx + cols] for dy in range(3) for dx in range(3)) / 9
    chosen = np.sort(np.argsort(field_, axis=None, kind="stable")[::-1][:wanted])
    top, left = (options.height - rows * options.crop) // 2, (options.width - cols * options.crop) // 2
    placements = []
    for n, cell in enumerate(chosen.tolist()):
        y, x = top + (cell // cols) * options.crop, left + (cell % cols) * options.crop
        if options.monuseg is None:
            placements.append(Placement(x, y, options.crop, options.crop, None, None,
                                        procedural_seed=options.seed * 1000 + n % PROCEDURAL_POOL))
            continue
        image, mask = pairs[rng.integers(len(pairs))]
        sx, sy = (int(v) for v in rng.integers(0, side - options.crop + 1, 2))
        placements.append(Placement(x, y, options.crop, options.crop, str(image), str(mask), sx, sy))
    return placements


def level_shapes(options: SlideOptions) -> list[tuple[int, int]]:
    """(height, width) of each pyramid level: level 0, then ``downsample``x smaller while large enough."""
    shapes, factor = [(options.height, options.width)], options.downsample
    while (len(shapes) < options.max_levels
           and min(options.height, options.width) // factor >= options.min_level_side):
        shapes.append((options.height // factor, options.width // factor))
        factor *= options.downsample
    return shapes


def compose_rows(placements: list[Placement], options: SlideOptions, shape: tuple[int, int],
                 y0: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1`` of a level of (height, width) ``shape``: background with the crops pasted in."""
    height, width = shape
    scale_y, scale_x = height / options.height, width / options.width
    band = np.empty((y1 - y0, width, 3), np.uint8)
    band[:] = BACKGROUND
    for placement in placements:
        top, bottom = round(placement.y * scale_y), round((placement.y + placement.height) * scale_y)
        if bottom <= y0 or top >= y1:
            continue
        left, right = round(placement.x * scale_x), round((placement.x + placement.width) * scale_x)
        if (right - left, bottom - top) == (placement.width, placement.height):
            pixels = crop_pixels(placement)
        else:
            pixels = _scaled_crop(placement, max(right - left, 1), max(bottom - top, 1))
        low, high = max(top, y0), min(bottom, y1)
        band[low - y0:high - y0, left:right] = pixels[low - top:high - top, :right - left]
    return band


def truth_rows(placements: list[Placement], y0: int, y1: int, width: int) -> np.ndarray:
    """Rows ``y0:y1`` of the slide's level-0 ground truth: (y1 - y0, width) uint8, 1 on nuclei."""
    band = np.zeros((y1 - y0, width), np.uint8)
    for placement in placements:
        low, high = max(placement.y, y0), min(placement.y + placement.height, y1)
        if low < high:
            mask = crop_mask(placement)
            band[low - y0:high - y0, placement.x:placement.x + placement.width] = mask[low - placement.y:high - placement.y]
    return band


def _tiles(placements, options: SlideOptions, shape: tuple[int, int]) -> Iterator[np.ndarray]:
    """Full (tile, tile, 3) tiles of one level in row-major order, composed one tile row at a time."""
    tile = options.tile
    height, width = shape
    for y0 in range(0, height, tile):
        band = compose_rows(placements, options, shape, y0, min(y0 + tile, height))
        for x0 in range(0, width, tile):
            chunk = band[:, x0:x0 + tile]
            if chunk.shape[:2] != (tile, tile):
                padded = np.empty((tile, tile, 3), np.uint8)
                padded[:] = BACKGROUND
                padded[:chunk.shape[0], :chunk.shape[1]] = chunk
                chunk = padded
            yield np.ascontiguousarray(chunk)


def _aperio_description(options: SlideOptions, shape: tuple[int, int]) -> str:
    quality = f" Q={options.quality}" if options.compression == "jpeg" else ""
    codec = "JPEG" if options.compression == "jpeg" else "Deflate"
    return (f"Aperio Image Library v12.0.15 \r\n{options.width}x{options.height} [0,0 {shape[1]}x{shape[0]}] "
            f"({options.tile}x{options.tile}) {codec}/RGB{quality}|AppMag = {options.magnification}"
            f"|MPP = {options.mpp:.4f}|Filename = synthetic|ScanScope ID = mrdl-synthetic")


def _write(tmp: Path, placements: list[Placement], options: SlideOptions, shapes) -> None:
    import tifffile

    compression = {"jpeg": ("jpeg", {"level": options.quality}), "zlib": ("zlib", {"level": 6})}[options.compression]
    bigtiff = options.width * options.height * 3 > 2 ** 31
    common = dict(dtype=np.uint8, photometric="rgb", tile=(options.tile, options.tile),
                  compression=compression[0], compressionargs=compression[1])
    pixels_per_cm = 1e4 / options.mpp
    if options.kind == "svs":
        with tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif:
            for level, shape in enumerate(shapes):
                tif.write(_tiles(placements, options, shape), shape=(*shape, 3), metadata=None,
                          description=_aperio_description(options, shape), **common)
                if level == 0:  # Aperio's second page: a small stripped thumbnail
                    factor = max(options.width, options.height) / THUMBNAIL_SIDE
                    thumb = (max(1, round(options.height / factor)), max(1, round(options.width / factor)))
                    tif.write(compose_rows(placements, options, thumb, 0, thumb[0]), photometric="rgb",
                              metadata=None, description=_aperio_description(options, thumb),
                              compression=compression[0], compressionargs=compression[1])
        return
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=True) as tif:
        ome = {"axes": "YXS", "PhysicalSizeX": options.mpp, "PhysicalSizeXUnit": "µm",
               "PhysicalSizeY": options.mpp, "PhysicalSizeYUnit": "µm", "Name": "mrdl synthetic slide"}
        for level, shape in enumerate(shapes):
            factor = options.width / shape[1]
            tif.write(_tiles(placements, options, shape), shape=(*shape, 3),
                      subifds=len(shapes) - 1 if level == 0 else None, subfiletype=0 if level == 0 else 1,
                      metadata=ome if level == 0 else None, resolutionunit="CENTIMETER",
                      resolution=(pixels_per_cm / factor, pixels_per_cm / factor), **common)


def build_synthetic_slide(path: str | Path, options: SlideOptions) -> SyntheticSlide:
    """Write the slide to ``path`` and its placements to ``<path>.placements.json`` (both renamed into place)."""
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    placements = layout(options)
    shapes = level_shapes(options)
    source = f"MoNuSeg ({options.monuseg})" if options.monuseg else "procedural (no MoNuSeg folder given)"
    tissue = sum(p.width * p.height for p in placements) / (options.width * options.height)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write(tmp, placements, options, shapes)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    record = {"slide": path.name, "width": options.width, "height": options.height, "mpp": options.mpp,
              "source": source, "tissue_fraction": tissue, "level_shapes": shapes, "options": asdict(options),
              "placements": [asdict(p) for p in placements]}
    placements_path = path.with_name(path.name + ".placements.json")
    tmp_json = placements_path.with_name(f".{placements_path.name}.tmp")
    tmp_json.write_text(json.dumps(record, indent=1))
    os.replace(tmp_json, placements_path)
    return SyntheticSlide(path, placements_path, placements, shapes, source, tissue, time.perf_counter() - start)


def read_placements(placements_path: str | Path) -> list[Placement]:
    """The placements written beside a slide by :func:`build_synthetic_slide`."""
    return [Placement(**p) for p in json.loads(Path(placements_path).read_text())["placements"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = SlideOptions()
    parser.add_argument("out", type=Path, help="slide file to write (.svs or .ome.tif)")
    parser.add_argument("--size", type=int, help="square slide side in level-0 pixels (or --width/--height)")
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--kind", choices=KINDS, help="default: from the suffix (.svs: svs, else ome-tiff)")
    parser.add_argument("--compression", choices=COMPRESSIONS, default=defaults.compression)
    parser.add_argument("--tissue-fraction", type=float, default=defaults.tissue_fraction)
    parser.add_argument("--mpp", type=float, default=defaults.mpp)
    parser.add_argument("--crop", type=int, default=defaults.crop)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--monuseg", type=Path, help="MoNuSeg folder; without it crops are procedural")
    args = parser.parse_args(argv)
    width, height = (args.size, args.size) if args.size else (args.width, args.height)
    kind = args.kind or ("svs" if args.out.suffix.lower() == ".svs" else "ome-tiff")
    try:
        options = SlideOptions(width=width, height=height, tissue_fraction=args.tissue_fraction, mpp=args.mpp,
                               kind=kind, compression=args.compression, crop=args.crop, seed=args.seed,
                               monuseg=str(args.monuseg) if args.monuseg else None)
        slide = build_synthetic_slide(args.out, options)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{slide.path}: {width}x{height} {kind} ({args.compression}), levels {slide.level_shapes}, "
          f"{len(slide.placements)} crops from {slide.source}, tissue {slide.tissue_fraction:.1%}, "
          f"{slide.path.stat().st_size / 1e6:.1f} MB in {slide.seconds:.1f} s, peak RSS {peak:.0f} MiB; "
          f"placements: {slide.placements_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
