"""Whole-slide segmentation at the training resolution, streamed band by band (docs/slides.md).

:class:`SlideSegmenter` segments a pyramidal slide (SVS, pyramidal TIFF, OME-TIFF) with bounded
memory, as the tiled runtime (docs/tiling.md) would segment the whole slide as one image:

1. **Scale.** The model sees ``source_mpp * source_size / size`` microns per pixel (model.json).
   The reader picks the coarsest level at least that fine (:func:`~mrdl_runtime.slide_reader.choose_level`)
   and the rest is resampled by the tiled runtime's rule (Pillow's bilinear, antialiased). The
   resampled level is the *grid*: windows run on it and the mask is written at its resolution.
2. **Tissue.** Otsu on the saturation of the coarsest level (:mod:`~mrdl_runtime.slide_tissue`);
   windows without tissue are not run (their pixels are background), bands without any are not read.
3. **Bands.** A band is one row of windows. Its new grid rows are read and resampled in a
   background thread while the previous band's windows run; each band's windows are blended
   (docs/tiling.md weights, in the same order as :func:`~mrdl_runtime.tiling.stitch`) into
   accumulators one band high, the rows no later window touches are finished and appended to an
   uncompressed intermediate file, and the overlap rows carry to the next band.
4. **Outputs.** The intermediate is turned into a pyramidal OME-TIFF mask (and probabilities as
   uint8, when asked) and QuPath GeoJSON, strip by strip, through temporary names in the slide's
   partial folder (so a killed run's leftovers go with that folder).
5. **Resume.** After a band, every ``checkpoint_seconds`` (2 s), the carried rows and the band count
   are saved atomically beside the intermediate (after the rows are fsynced); ``resume=True`` checks the
   saved files and continues from the last save, giving the same bytes as one run, or starts over with a
   warning when they are missing, short or unreadable. A slide that fails removes its partial folder.
   One run at a time writes a slide into a folder: the stem's lock (:func:`~mrdl_runtime.slide_state.writing_lock`)
   is held from before the partial folder is touched until the record is written.

Memory: a band of grid rows, its level rows and the accumulators, twice (one band read ahead),
plus a 1/16-area copy of the mask for the OME-TIFF pyramid; nothing holds a whole level.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import shutil
import time
import uuid as uuid_module
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from .atomic import atomic_path
from .errors import OptionsError
from .imaging import probabilities_to_mask, to_model_input
from .manifest import Manifest
from .options import OptionsBase, check_fields, option
from .resample import axis_taps, horizontal_pass, vertical_pass_uint8
from .slide_ometiff import write_ome_tiff
from .slide_reader import SlideError, SlideLevel, SlideReader, choose_level
from .slide_state import STATE_VERSION, Intermediate, UnusableState, writing_lock
from .slide_tissue import THUMBNAIL_SIDE, TissueMask, tissue_mask
from .tiling import (BLEND_MODES, DEFAULT_OVERLAP, MAX_OVERLAP, TileOptions, blend_weights, padded_to_window,
                     resampled_size, window_starts)

logger = logging.getLogger("mrdl_runtime")

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".btf", ".tf8")
OUTPUT_SUFFIXES = (".mask.ome.tif", ".probabilities.ome.tif")  # this module's own outputs, never inputs
WindowRun = Callable[[np.ndarray], np.ndarray]  # (B, mh, mw, 3) uint8 windows -> (B, C, mh, mw) float32


@dataclass(frozen=True)
class SlideOptions(OptionsBase):
    """How :meth:`SlideSegmenter.predict_slide` segments a slide (``mrdl predict-slide``'s options)."""

    mpp: float | None = option(
        None, "The slide's microns per pixel at full resolution, overriding (or supplying, where the file has none) "
        "its Aperio MPP / OME PhysicalSize / TIFF resolution", low=0, high=1000, flag="--mpp")
    tissue_mask: bool = option(True, "Skip windows without tissue (Otsu on the saturation of the slide's coarsest "
                               "level); their pixels are background")
    tissue_threshold: float | None = option(
        None, "Tissue: saturation in [0, 1] above which a pixel is tissue (default: Otsu's threshold, clipped to "
        "[0.05, 0.15])", low=0, high=1)
    overlap: float = option(DEFAULT_OVERLAP, "Fraction of a window shared with its neighbour (docs/tiling.md)",
                            low=0, high=MAX_OVERLAP)
    blend: str = option("gaussian", "Window weights, gaussian (sigma = window / 8, as MONAI) or constant",
                        choices=BLEND_MODES)
    probabilities: bool = option(False, "Also write the class probabilities (uint8, p * 255) as an OME-TIFF")
    geojson: bool = option(True, "Write the segmented objects as QuPath GeoJSON (polygons in level-0 pixels)")
    gzip: bool = option(False, "Compress the GeoJSON (.geojson.gz)")
    min_area_px: int = option(0, "GeoJSON: leave out objects smaller than this many mask pixels", low=0)
    resume: bool = option(False, "Continue an interrupted slide from its last saved band (state kept in "
                          "OUT/.<slide>.partial); the outputs are the same bytes as one uninterrupted run")
    progress: bool = option(False, "Show a bar of each slide's windows on stderr", cli=False)

    def __post_init__(self) -> None:
        TileOptions(True, self.overlap, self.blend)  # the same checks and messages as tiling
        check_fields(self)
        if self.mpp is not None and self.mpp <= 0:
            raise OptionsError(f"mpp must be the slide's microns per pixel, a number in (0, 1000], got {self.mpp!r}")

    def output_settings(self) -> dict:
        """The settings that change the outputs (a resumed run must have the same)."""
        return {key: value for key, value in asdict(self).items() if key not in ("resume", "progress")}


def model_mpp(manifest: Manifest) -> tuple[float, float]:
    """(y, x) microns per model-input pixel: ``source_mpp * source_size / size`` (``source_mpp`` alone
    when model.json has no source_size: the training images were then at the model size)."""
    if manifest.source_mpp is None:
        raise SlideError(f"model {manifest.name} records no training resolution (model.json has no 'source_mpp'), "
                         "so a slide cannot be segmented at the right scale; re-export it with "
                         "mrdl-export --source-mpp MICRONS_PER_PIXEL (e.g. 0.25 for MoNuSeg at 40x)")
    source = manifest.source_size or manifest.size
    return tuple(manifest.source_mpp * s / m for s, m in zip(source, manifest.size))  # type: ignore[return-value]


@dataclass(frozen=True)
class SlidePlan:
    """The geometry of one slide: the level read, the grid (the mask's size, the level resampled to
    the model's resolution), the padded grid and the windows' row and column starts."""

    slide_size: tuple[int, int]
    level: SlideLevel
    grid: tuple[int, int]
    padded: tuple[int, int]
    rows: tuple[int, ...]
    columns: tuple[int, ...]

    @property
    def mask_mpp(self) -> tuple[float, float]:
        """(y, x) microns per mask pixel."""
        return tuple(mpp * n / g for mpp, n, g in zip(self.level.mpp, self.level.size, self.grid))  # type: ignore

    @property
    def level0_per_mask_pixel(self) -> tuple[float, float]:
        """(y, x) level-0 pixels per mask pixel, per axis: slide pixels need not be square (0.25 x 0.5 um),
        and the grid's rounding differs between axes, so one ratio would move the other axis's objects."""
        return self.slide_size[0] / self.grid[0], self.slide_size[1] / self.grid[1]

    @property
    def windows(self) -> int:
        return len(self.rows) * len(self.columns)


def plan_slide(levels: tuple[SlideLevel, ...], manifest: Manifest, overlap: float) -> SlidePlan:
    """Choose the level and lay out the grid and windows of a slide for ``manifest``'s model."""
    target = model_mpp(manifest)
    level = choose_level(levels, target)
    model_size = manifest.size
    if level.mpp[0] == manifest.source_mpp == level.mpp[1] and manifest.source_size is not None:
        grid = resampled_size(level.size, manifest.source_size, model_size)  # the tiled runtime's integer rule
    else:
        grid = tuple(max(1, math.floor(n * mpp / t + 0.5)) for n, mpp, t in zip(level.size, level.mpp, target))
    padded = padded_to_window(grid, model_size)
    return SlidePlan(levels[0].size, level, tuple(grid), padded,  # type: ignore[arg-type]
                     tuple(window_starts(padded[0], model_size[0], overlap)),
                     tuple(window_starts(padded[1], model_size[1], overlap)))


def read_thumbnail(reader: SlideReader, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The coarsest level, subsampled to at most ``side`` pixels along its longer axis, read in tile rows."""
    level = reader.levels[-1]
    height, width = level.size
    step = max(1, math.ceil(max(height, width) / side))
    if step == 1:
        return reader.read(level.index, (0, height), (0, width))
    block = max(reader.tile_height(level.index), step)
    parts = []
    for first in range(0, height, block):
        rows = reader.read(level.index, (first, min(first + block, height)), (0, width))
        parts.append(rows[-first % step::step, ::step])
    return np.concatenate(parts)


@dataclass
class SlideResult:
    """What one slide's run did: sizes, level, tissue, windows, time and the files written."""

    slide: Path
    slide_size: tuple[int, int]
    mpp: tuple[float, float]
    mpp_source: str
    level: SlideLevel
    grid: tuple[int, int]
    mask_mpp: tuple[float, float]
    tissue_fraction: float | None
    windows: int
    windows_run: int
    seconds: float
    resumed_bands: int = 0
    batches_run: int = 0  # model calls of this run (a resumed run counts its own only)
    model_seconds: float = 0.0  # time inside the window runner (model input, inference, transfer) in this run
    objects: int | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # also logged; recorded in <slide>.json

    def line(self) -> str:
        """One summary line."""
        (h0, w0), (gh, gw), level = self.slide_size, self.grid, self.level
        tissue = "tissue mask off" if self.tissue_fraction is None else f"tissue {self.tissue_fraction:.1%}"
        rate = self.windows_run / self.seconds if self.seconds > 0 else 0.0
        resumed = f", resumed after {self.resumed_bands} bands" if self.resumed_bands else ""
        objects = "" if self.objects is None else f", {self.objects} objects"
        return (f"{self.slide.name}: {w0}x{h0} px at {_mpp_text(self.mpp)} ({self.mpp_source}); level "
                f"{level.index} ({level.size[1]}x{level.size[0]}, {_mpp_text(level.mpp)}) -> mask {gw}x{gh} at "
                f"{_mpp_text(self.mask_mpp)}; {tissue}; windows {self.windows_run}/{self.windows} run; "
                f"{self.seconds:.1f} s ({rate:.1f} windows/s){objects}{resumed}")


def _mpp_text(mpp: tuple[float, float]) -> str:
    """``0.25 um/px``, or ``0.25x0.5 um/px`` (x then y, as the sizes) when the pixels are not square."""
    y, x = (f"{value:.4g}" for value in mpp)
    return f"{x} um/px" if x == y else f"{x}x{y} um/px"


# Header names of the column holding the slide paths in a CSV list (compared without case), most specific first.
PATH_COLUMNS = ("path", "slide_path", "filepath", "file_path", "filename", "file_name", "file", "slide", "image")


def slide_paths(inputs: list[str | Path]) -> list[Path]:
    """Slides from ``inputs``: files, folders (their files with a slide suffix, sorted) and CSV lists
    (:func:`csv_slide_paths`). A missing input, and a folder or list that names no slide, are errors. A
    slide named twice (``a.svs ./a.svs``, a folder and a list) is segmented once: its first mention counts."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += folder_slide_paths(item)
        elif item.suffix.lower() == ".csv" and item.is_file():
            found += csv_slide_paths(item)
        elif item.is_file():
            found.append(item)
        else:
            raise SlideError(f"{item}: no such slide, folder or CSV list")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    found = list(unique.values())
    stems: dict[str, Path] = {}
    for path in found:
        clash = stems.setdefault(slide_stem(path), path)
        if clash != path:
            raise SlideError(f"{clash} and {path} would write the same outputs ({slide_stem(path)}.*); "
                             "segment them into different --out folders")
    return found


def folder_slide_paths(folder: Path) -> list[Path]:
    """The files of ``folder`` with a slide suffix (not this tool's outputs), sorted; a folder without any is
    an error naming the suffixes looked for and what the folder holds (subfolders are not searched)."""
    entries = list(folder.iterdir())
    files = [path for path in entries if path.is_file()]
    slides = sorted(path for path in files if path.name.lower().endswith(SLIDE_SUFFIXES)
                    and not path.name.lower().endswith(OUTPUT_SUFFIXES))
    if slides:
        return slides
    kinds: dict[str, int] = {}
    for path in files:
        kind = next((suffix for suffix in OUTPUT_SUFFIXES if path.name.lower().endswith(suffix)),
                    path.suffix.lower() or "suffix-less")
        kinds[kind] = kinds.get(kind, 0) + 1
    held = [f"{count} {kind} file{'s' if count > 1 else ''}"
            for kind, count in sorted(kinds.items(), key=lambda item: (-item[1], item[0]))]  # most first
    folders = len(entries) - len(files)
    if folders:
        held.append(f"{folders} folder{'s' if folders > 1 else ''} (not searched)")
    holds = f"it holds {', '.join(held)}" if held else "it is empty"
    raise SlideError(f"no slides ({', '.join(SLIDE_SUFFIXES)}) in {folder}: {holds}; other formats are not "
                     "read (docs/slides.md, Limits)")


def csv_slide_paths(path: Path) -> list[Path]:
    """The slides a CSV list names: UTF-8 text (a byte-order mark, as spreadsheet programs write, is
    dropped); blank lines and lines starting with ``#`` are skipped; a first row naming one of
    :data:`PATH_COLUMNS` (any case) is the header and picks the column, otherwise every row is a slide
    in the first column. Relative paths are from the CSV's folder. A row without a value in that column,
    text that is not UTF-8 and malformed CSV are errors naming the file and line."""
    import csv
    import io

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        encoding = "UTF-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else "not UTF-8"
        raise SlideError(f"{path} line {line}: the list is {encoding} text (byte 0x{raw[exc.start]:02x}); expected "
                         "UTF-8: save it as 'CSV UTF-8' (or convert it: iconv -t UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[tuple[int, list[str]]] = []
    try:
        for row in reader:
            cells = [cell.strip() for cell in row]
            if any(cells) and not cells[0].startswith("#"):
                rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise SlideError(f"{path} line {reader.line_num}: not a readable CSV list ({exc})") from None
    column, name = 0, None
    if rows:
        header = [cell.lower() for cell in rows[0][1]]
        known = next((known for known in PATH_COLUMNS if known in header), None)
        if known is not None:
            column = header.index(known)
            name, rows = rows[0][1][column], rows[1:]
    found = []
    for line, cells in rows:
        value = cells[column] if column < len(cells) else ""
        if not value:
            what = "path" if name is None else f"'{name}' value"
            raise SlideError(f"{path} line {line}: no {what} (the row has {len(cells)} column"
                             f"{'s' if len(cells) != 1 else ''}, the path is in column {column + 1})")
        found.append(path.parent / value)
    if not found:
        raise SlideError(f"{path} names no slides (a '{PATH_COLUMNS[0]}' column, or paths in the first column)")
    return found


def prepare_out_dir(out_dir: str | Path) -> Path:
    """``out_dir``, created if missing and checked writable (a file is made there and removed): an output folder
    that cannot be written fails once, with one message, before a model is loaded or a slide is read."""
    import tempfile

    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise SlideError(f"cannot write to --out {out_dir} ({exc.strerror or exc}); choose a folder you can "
                         "write to") from None
    return out_dir


def _keeps_partial(error: Exception) -> bool:
    """Whether a failed slide keeps its partial folder: a full disk or quota is an interruption the user
    fixes and then resumes from; any other failure would only fail again. (Ctrl-C always keeps it.)"""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def slide_stem(path: Path) -> str:
    """``a.ome.tif`` -> ``a``; ``a.svs`` -> ``a``."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *SLIDE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[:-len(suffix)]
    return path.stem


class SlideSegmenter:
    """Segments whole slides with a model: ``manifest`` (model.json) and ``run_windows``, a function
    from (B, mh, mw, 3) uint8 windows (B <= ``batch``) to (B, C, mh, mw) float32 probabilities.

    Build one with :meth:`in_process` (a loaded :class:`~mrdl_runtime.Segmenter`) or :meth:`remote`
    (a :class:`~mrdl_runtime.RemoteSegmenter` and the served model's manifest).
    """

    checkpoint_seconds = 2.0  # the resume state is saved after a band when this long has passed since the last save
    requests_in_flight = 8  # remote: windows go out as this many requests at once, for the server's batcher

    def __init__(self, manifest: Manifest, run_windows: WindowRun, *, batch: int | None = None) -> None:
        self.manifest, self.run_windows = manifest, run_windows
        self.batch = batch or manifest.max_batch

    @classmethod
    def in_process(cls, segmenter) -> SlideSegmenter:
        """Windows run by ``segmenter.infer`` (the model's batch path, no resizing)."""
        scale = segmenter.manifest.scale

        def run(windows: np.ndarray) -> np.ndarray:
            return segmenter.infer(np.stack([to_model_input(window, scale) for window in windows]))

        return cls(segmenter.manifest, run)

    @classmethod
    def remote(cls, remote, manifest: Manifest) -> SlideSegmenter:
        """Windows sent to a Triton server (``mrdl serve``): each window is a model-size image, which
        the server segments whole (no resize either way) and answers with its probabilities; a call
        holds ``requests_in_flight`` requests of the server's ``max_batch`` windows, sent at once."""

        def run(windows: np.ndarray) -> np.ndarray:
            predictions = remote.predict_batch(list(windows), tile=False, with_probabilities=True)
            return np.stack([prediction.probabilities for prediction in predictions]).astype(np.float32, copy=False)

        per_request = getattr(remote, "max_batch", None) or manifest.max_batch
        return cls(manifest, run, batch=per_request * cls.requests_in_flight)

    # ---- one slide ----

    def _job_key(self, path: Path, reader: SlideReader, plan: SlidePlan, options: SlideOptions) -> str:
        stat = path.stat()
        identity = {"version": STATE_VERSION, "slide": str(path.resolve()), "bytes": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns, "model": self.manifest.raw.get("export_id", self.manifest.name),
                    "level": plan.level.index, "grid": plan.grid, "mpp": reader.levels[0].mpp,
                    "options": options.output_settings()}
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def predict_slide(self, path: str | Path, out_dir: str | Path, options: SlideOptions = SlideOptions()) -> SlideResult:
        """Segment one slide into ``out_dir``: ``<stem>.mask.ome.tif`` (class index per pixel at the
        model's resolution), ``<stem>.probabilities.ome.tif`` (with ``probabilities``), ``<stem>.geojson``
        (``.geojson.gz`` with ``gzip``) and ``<stem>.json`` (this run's record)."""
        start = time.perf_counter()
        path, out_dir = Path(path), prepare_out_dir(out_dir)
        stem = slide_stem(path)
        with writing_lock(out_dir, stem):
            return self._predict_locked(path, out_dir, stem, options, start)

    def _predict_locked(self, path: Path, out_dir: Path, stem: str, options: SlideOptions,
                        start: float) -> SlideResult:
        """:meth:`predict_slide` with the stem's lock held: only this run reads or removes its partial folder."""
        work: Intermediate | None = None
        try:
            with SlideReader(path, mpp=options.mpp) as reader:
                plan = plan_slide(reader.levels, self.manifest, options.overlap)
                tissue, warnings = self._tissue(reader, path, options)
                keep = self._windows_kept(plan, tissue)
                planes = self.manifest.n_classes if options.probabilities else 0
                work = Intermediate(out_dir / f".{stem}.partial", plan.grid, planes)
                key = self._job_key(path, reader, plan, options)
                done, carry = self._resume_or_create(work, key, path, options)
                batches, model_seconds = self._run_bands(reader, plan, keep, work, key, done, carry, options, stem)
            result = SlideResult(path, plan.slide_size, reader.levels[0].mpp, reader.mpp_source, plan.level,
                                 plan.grid, plan.mask_mpp, None if tissue is None else tissue.fraction, plan.windows,
                                 int(sum(map(sum, keep))), 0.0, resumed_bands=done, batches_run=batches,
                                 model_seconds=model_seconds, warnings=warnings)
            self._write_outputs(work, plan, out_dir, stem, key, options, result)
        except Exception as exc:
            if work is not None and not _keeps_partial(exc):
                shutil.rmtree(work.folder, ignore_errors=True)  # a failed slide leaves nothing half-done behind
            raise
        result.seconds = time.perf_counter() - start
        self._write_record(out_dir / f"{stem}.json", result, options, work.folder)
        shutil.rmtree(work.folder, ignore_errors=True)
        return result

    @staticmethod
    def _tissue(reader: SlideReader, path: Path, options: SlideOptions) -> tuple[TissueMask | None, list[str]]:
        """The tissue mask (None with ``tissue_mask`` off) and the warnings it raises: a slide with no
        tissue found at all (blank, or grey: saturation finds nothing) would give an empty mask silently."""
        if not options.tissue_mask:
            return None, []
        tissue = tissue_mask(read_thumbnail(reader), options.tissue_threshold)
        if tissue.fraction > 0:
            return tissue, []
        warning = ("tissue detection found no tissue (0%), so no window runs and the mask is empty; if the slide "
                   "is greyscale or faintly stained, rerun it with --no-tissue-mask")
        logger.warning("%s: %s", path, warning)
        return tissue, [warning]

    @staticmethod
    def _resume_or_create(work: Intermediate, key: str, path: Path,
                          options: SlideOptions) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
        """(bands done, carried rows): the interrupted run's with ``resume`` and a usable state, else a fresh start."""
        if options.resume and work.folder.exists():
            try:
                return work.resume(key)
            except UnusableState as problem:
                logger.warning("%s: cannot resume: %s; starting over", path, problem)
        work.create()
        return 0, None

    def _windows_kept(self, plan: SlidePlan, tissue: TissueMask | None) -> list[list[bool]]:
        """keep[band][column]: whether the window holds any tissue (all True without a tissue mask)."""
        (mh, mw), (gh, gw) = self.manifest.size, plan.grid
        if tissue is None:
            return [[True] * len(plan.columns) for _ in plan.rows]
        return [[tissue.any_in((y / gh, min(y + mh, gh) / gh), (x / gw, min(x + mw, gw) / gw))
                 for x in plan.columns] for y in plan.rows]

    def _fetch_plan(self, plan: SlidePlan, keep: list[list[bool]], first_band: int) -> dict[int, tuple[int, int]]:
        """band -> the grid rows [a, b) to read for it: its rows not already held from the band before."""
        mh, gh = self.manifest.size[0], plan.grid[0]
        fetch, held_end, held_band = {}, None, None
        for band in range(first_band, len(plan.rows)):
            if not any(keep[band]):
                continue
            y, end = plan.rows[band], min(plan.rows[band] + mh, gh)
            begin = held_end if held_band == band - 1 and held_end is not None and held_end > y else y
            fetch[band] = (min(begin, end), end)
            held_end, held_band = end, band
        return fetch

    def _resampler(self, reader: SlideReader, plan: SlidePlan) -> Callable[[int, int], np.ndarray]:
        """A function giving grid rows [a, b) as (b-a, grid width, 3) uint8, by the tiled runtime's rule."""
        level, (gh, gw) = plan.level, plan.grid
        height, width = level.size
        taps = axis_taps(height, gh) if gh != height else None

        def rows(first: int, stop: int) -> np.ndarray:
            if stop <= first:
                return np.zeros((0, gw, 3), dtype=np.uint8)
            if taps is None:
                return np.ascontiguousarray(horizontal_pass(reader.rows(level.index, first, stop), gw))
            low, high = taps.rows_needed(first, stop)
            return vertical_pass_uint8(horizontal_pass(reader.rows(level.index, low, high), gw), taps, first, stop, low)

        return rows

    def _run_bands(self, reader: SlideReader, plan: SlidePlan, keep: list[list[bool]], work: Intermediate,
                   key: str, first_band: int, carry: tuple[np.ndarray, np.ndarray] | None,
                   options: SlideOptions, stem: str) -> tuple[int, float]:
        """Run every band from ``first_band``: (model calls, seconds inside them)."""
        manifest = self.manifest
        (mh, mw), (gh, gw), (_, wp) = manifest.size, plan.grid, plan.padded
        classes = manifest.n_classes
        weights = blend_weights(manifest.size, options.blend)  # (mh, mw)
        fetch = self._fetch_plan(plan, keep, first_band)
        order = sorted(fetch)
        resample = self._resampler(reader, plan)
        total = sum(sum(row) for row in keep)
        already = sum(sum(row) for row in keep[:first_band])
        bar = tqdm(total=total, initial=already, desc=stem, unit="window", disable=not options.progress,
                   dynamic_ncols=True)
        held, held_first = np.zeros((0, gw, 3), dtype=np.uint8), 0  # grid rows [held_first, +len(held))
        batches, model_seconds, saved = 0, 0.0, time.perf_counter()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrdl-slide-read") as pool:
            pending = {band: pool.submit(resample, *fetch[band]) for band in order[:1]}
            for band in range(first_band, len(plan.rows)):
                y = plan.rows[band]
                num = np.zeros((classes, mh, wp), dtype=np.float32)
                den = np.zeros((mh, wp), dtype=np.float32)
                if carry is not None:
                    count = carry[1].shape[0]
                    num[:, :count], den[:count] = carry
                if band in fetch:
                    rows = pending.pop(band).result()  # (b-a, gw, 3)
                    following = order[order.index(band) + 1] if order.index(band) + 1 < len(order) else None
                    if following is not None:
                        pending[following] = pool.submit(resample, *fetch[following])
                    a, b = fetch[band]
                    if a == y or len(held) == 0:
                        held, held_first = rows, a
                    else:  # the rows carried from the band before, then the new ones
                        held = np.concatenate([held[y - held_first:], rows])
                        held_first = y
                    image = np.zeros((mh, wp, 3), dtype=np.uint8)  # the band, zero-padded as docs/tiling.md
                    image[:len(held), :gw] = held
                    columns = [x for x, kept in zip(plan.columns, keep[band]) if kept]
                    for begin in range(0, len(columns), self.batch):
                        chunk = columns[begin:begin + self.batch]
                        windows = np.stack([image[:, x:x + mw] for x in chunk])  # (B, mh, mw, 3)
                        started = time.perf_counter()
                        probabilities = self.run_windows(windows)  # (B, C, mh, mw)
                        model_seconds += time.perf_counter() - started
                        for x, window in zip(chunk, probabilities):  # window (C, mh, mw)
                            num[:, :, x:x + mw] += weights * window  # float32 product, then float32 sum
                            den[:, x:x + mw] += weights
                        bar.update(len(chunk))
                        batches += 1
                last = band + 1 == len(plan.rows)
                finished = min(gh, y + mh) - y if last else plan.rows[band + 1] - y
                self._finish_rows(work, y, num[:, :finished], den[:finished], gw, options)
                carry = None if last else (num[:, finished:].copy(), den[finished:].copy())
                if time.perf_counter() - saved >= self.checkpoint_seconds:  # a few fsyncs a minute, not per band
                    work.save(key, band + 1, carry)
                    saved = time.perf_counter()
        bar.close()
        return batches, model_seconds

    def _finish_rows(self, work: Intermediate, y: int, num: np.ndarray, den: np.ndarray, width: int,
                     options: SlideOptions) -> None:
        """Blend the finished rows (C, r, wp) / (r, wp) and append the mask (and probabilities) to the intermediate."""
        probabilities = np.zeros_like(num)
        np.divide(num, den, out=probabilities, where=den > 0)  # pixels of skipped windows only: background
        probabilities = probabilities[:, :, :width]
        mask = probabilities_to_mask(probabilities, threshold=self.manifest.threshold)
        scaled = None
        if options.probabilities:
            scaled = np.rint(np.clip(probabilities, 0.0, 1.0) * 255.0).astype(np.uint8)
        work.write_rows(y, mask, scaled)

    def _write_outputs(self, work: Intermediate, plan: SlidePlan, out_dir: Path, stem: str, key: str,
                       options: SlideOptions, result: SlideResult) -> None:
        """The OME-TIFF mask (with the GeoJSON fed the same rows), then the probabilities' OME-TIFF."""
        identity = str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, f"mrdl-slide:{key}"))
        geojson = None
        if options.geojson:
            from .slide_geojson import GeoJSONWriter

            name = f"{stem}.geojson" + (".gz" if options.gzip else "")
            scale = plan.level0_per_mask_pixel
            geojson = GeoJSONWriter(out_dir / name, width=plan.grid[1], height=plan.grid[0], scale=scale,
                                    class_names=list(self.manifest.classes), gzip=options.gzip,
                                    min_area_px=options.min_area_px, temporary_folder=work.folder)
            result.outputs["geojson"] = name
        mask_name = f"{stem}.mask.ome.tif"
        try:
            write_ome_tiff(out_dir / mask_name, lambda _plane, a, b: work.read_rows(0, a, b), size=plan.grid,
                           planes=1, mpp=plan.mask_mpp, uuid=identity, temporary_folder=work.folder,
                           on_rows=None if geojson is None else lambda first, rows: geojson.add_band(first, rows))
        except BaseException:
            if geojson is not None:
                geojson.abort()
            raise
        result.outputs["mask"] = mask_name
        if geojson is not None:
            result.objects = geojson.close()
        if options.probabilities:
            name = f"{stem}.probabilities.ome.tif"
            write_ome_tiff(out_dir / name, lambda plane, a, b: work.read_rows(1 + plane, a, b), size=plan.grid,
                           planes=self.manifest.n_classes, mpp=plan.mask_mpp, temporary_folder=work.folder,
                           uuid=str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, f"mrdl-slide-probabilities:{key}")),
                           channel_names=list(self.manifest.classes[-self.manifest.n_classes:]))
            result.outputs["probabilities"] = name

    def _write_record(self, path: Path, result: SlideResult, options: SlideOptions, temporary_folder: Path) -> None:
        record = {"slide": str(result.slide), "slide_size": list(result.slide_size), "mpp": list(result.mpp),
                  "mpp_source": result.mpp_source, "level": result.level.index, "level_size": list(result.level.size),
                  "level_mpp": list(result.level.mpp), "mask_size": list(result.grid),
                  "mask_mpp": list(result.mask_mpp), "model_mpp": list(model_mpp(self.manifest)),
                  "model": self.manifest.name, "export_id": self.manifest.raw.get("export_id"),
                  "tissue_fraction": result.tissue_fraction, "windows": result.windows,
                  "windows_run": result.windows_run, "batches_run": result.batches_run, "seconds": result.seconds,
                  "model_seconds": result.model_seconds,
                  "resumed_bands": result.resumed_bands, "objects": result.objects, "outputs": result.outputs,
                  "warnings": result.warnings,
                  "settings": options.output_settings()}
        with atomic_path(path, folder=temporary_folder) as temporary:
            temporary.write_text(json.dumps(record, indent=2) + "\n")
