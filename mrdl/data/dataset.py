"""Segmentation datasets in LViT's layout (docs/architecture.md, "Data").

    <root>/<Split>_Folder/img/*.{png,tif,tiff,jpg,jpeg,bmp}   RGB images
    <root>/<Split>_Folder/labelcol/<same stem>.*              8-bit masks, {0,255} or {0,1}
    <root>/<Split>_Folder/<Split>_text.xlsx  (or <root>/<Split>_text.xlsx, or .csv)
                                                              columns Image, Description keyed by mask file name

Description tables are read within :class:`TableLimits` (file size, unzipped size of an xlsx, rows,
characters per cell), checked before and while reading, so a small xlsx that unzips to gigabytes or
holds one huge description is refused with the limit's name and the option that raises it.

Every image is read with :mod:`mrdl.data.preprocess` (the runtime's one decoding rule), resized to
the model size (masks nearest-neighbour) and kept in memory. Train-time augmentation is LViT's: with
p=0.5 a random rot90 plus a random flip, otherwise with p=0.5 (0.25 overall) a rotation by up to ±20°.
Augmentation draws from a generator seeded by (seed, epoch, index), so a run is reproducible and a
resumed run sees the same augmented images as an uninterrupted one.
"""

from __future__ import annotations

import csv
import statistics
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mrdl_runtime.errors import MrdlError
from mrdl_runtime import tiff
from mrdl_runtime.imaging import IMAGE_SUFFIXES, exif_orientation, file_exif_orientation, palette_colours

from .preprocess import ImageReadError, read_rgb, resize_mask, resize_rgb, to_model_input

SPLITS = ("Train", "Val", "Test")
MAX_TABLE_COLUMNS = 64  # columns of a description table beyond this one are never read


class DatasetError(MrdlError, ValueError):
    """A dataset folder that does not follow LViT's layout or holds bad files."""


@dataclass(frozen=True)
class Sample:
    """One image of a split: its name (the mask's file name), files and description (None if unknown)."""

    name: str
    image_path: Path
    mask_path: Path
    description: str | None


def split_folder(root: str | Path, split: str) -> Path:
    """``root/<split>_Folder``, checked to exist with its ``img`` and ``labelcol`` folders."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    folder = root / f"{split}_Folder"
    for path in (folder, folder / "img", folder / "labelcol"):
        if not path.is_dir():
            raise DatasetError(f"missing folder {path}: expected LViT's layout "
                               f"<root>/{split}_Folder/{{img,labelcol}} (splits: {', '.join(SPLITS)})")
    return folder


def text_table_path(root: str | Path, split: str) -> Path | None:
    """The description table of a split: xlsx or csv, inside the split folder or at the root. Two of them
    (an xlsx beside a csv, or one in each place) are refused: which one is meant cannot be told."""
    root = Path(root)
    found = [folder / f"{split}_text{suffix}" for folder in (root / f"{split}_Folder", root)
             for suffix in (".xlsx", ".csv") if (folder / f"{split}_text{suffix}").is_file()]
    if len(found) > 1:
        raise DatasetError(f"split {split} has {len(found)} description tables ({', '.join(map(str, found))}); "
                           "keep one")
    return found[0] if found else None


@dataclass(frozen=True)
class TableLimits:
    """Bounds on a description table; each is raised by the CLI option named in its error."""

    max_description_chars: int = 10_000  # per cell; CLIP reads only the first 77 tokens anyway
    max_table_mib: float = 50.0  # the file, and for xlsx also its unzipped contents
    max_rows: int = 100_000

    @property
    def max_table_bytes(self) -> int:
        return int(self.max_table_mib * 2**20)


def _check_table_size(path: Path, limits: TableLimits) -> None:
    """Refuse a table whose file, or whose unzipped xlsx members, exceed ``limits.max_table_mib``."""
    raise_it = "raise it with --max-table-mib if you trust the file"
    size = path.stat().st_size
    if size > limits.max_table_bytes:
        raise DatasetError(f"{path} is {size / 2**20:.1f} MiB, over the limit of {limits.max_table_mib:g} MiB "
                           f"for a description table; {raise_it}")
    if path.suffix.lower() != ".xlsx":
        return
    try:
        with zipfile.ZipFile(path) as archive:
            # zipfile never returns more bytes than a member's recorded size (a lie fails its CRC check),
            # so these sizes bound everything openpyxl can read.
            unzipped = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {path} as an xlsx workbook (not a zip archive): {exc}") from exc
    if unzipped > limits.max_table_bytes:
        raise DatasetError(f"{path} unzips to {unzipped / 2**20:.1f} MiB, over the limit of "
                           f"{limits.max_table_mib:g} MiB for a description table; {raise_it}")


def _table_rows(path: Path) -> Iterator[tuple[object, ...]]:
    """The rows of a csv or xlsx table (first sheet), at most MAX_TABLE_COLUMNS cells each."""
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            try:
                for row in csv.reader(handle):
                    yield tuple(row[:MAX_TABLE_COLUMNS])
            except (csv.Error, UnicodeDecodeError) as exc:
                raise DatasetError(f"cannot read {path} as a UTF-8 csv table: {exc}") from exc
        return
    from openpyxl import load_workbook

    try:
        book = load_workbook(path, read_only=True, data_only=True)
        sheet = book.active
        sheet.reset_dimensions()  # a forged <dimension> must not pad rows to 16384 columns
    except Exception as exc:  # openpyxl raises several unrelated types for a bad file
        raise DatasetError(f"cannot read {path} as an xlsx workbook: {exc}") from exc
    try:
        yield from sheet.iter_rows(values_only=True, max_col=MAX_TABLE_COLUMNS)
    except Exception as exc:  # malformed sheet XML: ParseError, KeyError, ValueError, ...
        raise DatasetError(f"cannot read {path} as an xlsx workbook: {exc}") from exc
    finally:
        book.close()


def _bounded_rows(path: Path, limits: TableLimits) -> Iterator[tuple[object, ...]]:
    """``_table_rows`` with the row and cell-length limits checked as each row arrives."""
    _check_table_size(path, limits)
    for line, row in enumerate(_table_rows(path), start=1):
        if line > limits.max_rows:
            raise DatasetError(f"{path} has more than {limits.max_rows} rows, the limit for a description table; "
                               "raise it with --max-rows")
        for cell in row:
            if isinstance(cell, str) and len(cell) > limits.max_description_chars:
                raise DatasetError(f"{path} row {line} holds a text of {len(cell)} characters, over the limit of "
                                   f"{limits.max_description_chars} characters per description; raise it with "
                                   "--max-description-chars")
        yield row


def read_descriptions(path: str | Path, *, limits: TableLimits = TableLimits()) -> dict[str, str]:
    """Read a description table (xlsx or csv, header ``Image, Description``) into {mask name: text}."""
    path = Path(path)
    rows = (row for row in _bounded_rows(path, limits) if any(cell not in (None, "") for cell in row))
    first = next(rows, None)
    if first is None:
        raise DatasetError(f"{path} is empty; expected a header row 'Image, Description'")
    header = [str(cell).strip() if cell is not None else "" for cell in first]
    if "Image" not in header or "Description" not in header:
        shown = [cell for cell in header if cell][:12]  # spreadsheets pad rows with empty cells
        raise DatasetError(f"{path} must have columns 'Image' and 'Description' in its first row (first sheet), "
                           f"found {shown}")
    image_col, text_col = header.index("Image"), header.index("Description")
    descriptions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        name = row[image_col] if image_col < len(row) else None
        text = row[text_col] if text_col < len(row) else None
        if name in (None, ""):
            raise DatasetError(f"{path} row {line} has no Image name")
        if text is None or not str(text).strip():
            raise DatasetError(f"{path} row {line} ({name}) has an empty Description")
        key = unicodedata.normalize("NFC", str(name).strip())  # file systems and spreadsheets differ in form
        if key in first_line:
            raise DatasetError(f"{path} names {key} twice (rows {first_line[key]} and {line}); keep one row per image")
        first_line[key] = line
        descriptions[key] = str(text).strip()
    return descriptions


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            if path.stem in files:
                raise DatasetError(f"two files share the name {path.stem!r} in {folder}: {files[path.stem].name}, {path.name}")
            files[path.stem] = path
    return files


def list_samples(root: str | Path, split: str, *, require_text: bool = True,
                 limits: TableLimits = TableLimits()) -> list[Sample]:
    """Pair every image of a split with its mask and description; any gap is a :class:`DatasetError`."""
    folder = split_folder(root, split)
    images = _files_by_stem(folder / "img")
    masks = _files_by_stem(folder / "labelcol")
    if not images:
        raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder / 'img'}")
    for stem, path in images.items():
        if stem not in masks:
            raise DatasetError(f"image {path} has no mask in {folder / 'labelcol'} (expected {stem}.png or similar)")
    for stem, path in masks.items():
        if stem not in images:
            raise DatasetError(f"mask {path} has no image in {folder / 'img'}")
    table = text_table_path(root, split)
    if table is None and require_text:
        raise DatasetError(f"no description table for split {split}: expected {folder / f'{split}_text.xlsx'} "
                           f"(or .csv) with columns Image, Description")
    descriptions = read_descriptions(table, limits=limits) if table is not None else {}
    samples = []
    for stem, image_path in images.items():
        mask_path = masks[stem]
        text = descriptions.get(unicodedata.normalize("NFC", mask_path.name),
                                descriptions.get(unicodedata.normalize("NFC", image_path.name)))
        if text is None and require_text:
            raise DatasetError(f"mask {mask_path.name} has no description in {table}")
        samples.append(Sample(mask_path.name, image_path, mask_path, text))
    return samples


def median_source_size(image_paths: Iterator[Path] | list[Path]) -> tuple[int, int]:
    """(median height, median width) of image files, read from their headers (``statistics.median_low``:
    the sizes of real images): the training scale that ``mrdl train`` records as provenance ``source_size``
    and tiled inference resamples to (docs/tiling.md)."""
    heights, widths = [], []
    for path in image_paths:
        with Image.open(path) as image:  # the header only; no pixel data is decoded
            widths.append(image.size[0])
            heights.append(image.size[1])
    if not heights:
        raise DatasetError("median_source_size needs at least one image")
    return statistics.median_low(heights), statistics.median_low(widths)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as HxW uint8 in {0, 1}; values other than {0,255} or {0,1} are refused."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            mask = tiff.oriented(np.asarray(palette_colours(img)), exif_orientation(img))  # turns as its image
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(f"cannot read mask {path} as an image: {exc}") from exc
    if mask.ndim == 3:
        if not (mask[..., :3] == mask[..., :1]).all():
            raise DatasetError(f"mask {path} is a colour image; expected one 8-bit channel with values {{0,255}}")
        mask = mask[..., 0]
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    values = set(np.unique(mask).tolist())
    if values <= {0, 255}:
        return (mask == 255).astype(np.uint8)
    if values <= {0, 1}:
        return mask.astype(np.uint8)
    raise DatasetError(f"mask {path} has values {sorted(values)[:8]}; expected {{0,255}} or {{0,1}}")


def check_orientations(image_path: Path, mask_path: Path) -> None:
    """Refuse an image that an EXIF Orientation turns while its mask carries no such turn (or another).

    Images are read as viewers show them (the turn applied), and so are masks; but a mask drawn on the
    stored pixels of a turned camera image would then be misaligned, silently when the image is square
    (a non-square one fails the size check). Which way it was drawn cannot be told from the files.
    """
    image_turn, mask_turn = file_exif_orientation(image_path), file_exif_orientation(mask_path)
    if image_turn != mask_turn:
        raise DatasetError(f"image {image_path} carries EXIF Orientation {image_turn} and its mask {mask_path} "
                           f"{mask_turn}: the mask may be drawn on the stored or on the turned pixels; save the image "
                           "with its turn applied (PIL.ImageOps.exif_transpose) and check its mask against it")


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """LViT's train-time augmentation of an (S, S, 3) image and (S, S) mask, drawn from ``rng``."""
    if rng.random() > 0.5:
        k = int(rng.integers(4))
        axis = int(rng.integers(2))
        image = np.flip(np.rot90(image, k), axis=axis)
        mask = np.flip(np.rot90(mask, k), axis=axis)
    elif rng.random() > 0.5:
        angle = float(rng.uniform(-20.0, 20.0))
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).rotate(angle, Image.BILINEAR))
        mask = np.asarray(Image.fromarray(np.ascontiguousarray(mask)).rotate(angle, Image.NEAREST))
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


class SegmentationDataset:
    """A split of an LViT-layout dataset as a torch-style map dataset.

    Item ``i`` is a dict: ``image`` float32 (3, S, S) in [0, 1], ``mask`` int64 (S, S) in {0, 1},
    ``name`` (the mask's file name) and ``index``. Images are decoded and resized once, at construction.
    """

    def __init__(self, root: str | Path, split: str, *, image_size: int, augment: bool = False,
                 seed: int = 0, require_text: bool = True, table_limits: TableLimits = TableLimits()) -> None:
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.samples = list_samples(root, split, require_text=require_text, limits=table_limits)
        self._images: list[np.ndarray] = []  # (S, S, 3) uint8 each
        self._masks: list[np.ndarray] = []  # (S, S) uint8 each
        for sample in self.samples:
            image = read_rgb(sample.image_path)
            mask = read_mask(sample.mask_path)
            check_orientations(sample.image_path, sample.mask_path)
            if mask.shape != image.shape[:2]:
                raise DatasetError(f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                                   f"is {image.shape[1]}x{image.shape[0]}")
            self._images.append(resize_rgb(image, image_size))
            self._masks.append(resize_mask(mask, image_size))

    @property
    def names(self) -> list[str]:
        return [sample.name for sample in self.samples]

    @property
    def descriptions(self) -> dict[str, str | None]:
        return {sample.name: sample.description for sample in self.samples}

    @property
    def source_size(self) -> tuple[int, int]:
        """The split's images' (median height, median width) before resizing (:func:`median_source_size`)."""
        return median_source_size([sample.image_path for sample in self.samples])

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of ``epoch`` (call before iterating each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The resized, unaugmented (S, S, 3) uint8 image and (S, S) uint8 mask of item ``index``."""
        return self._images[index], self._masks[index]

    def __getitem__(self, index: int) -> dict:
        import torch

        image, mask = self.raw(index)
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            image, mask = augment(image, mask, rng)
        return {"image": torch.from_numpy(to_model_input(image)),  # (3, S, S), as preprocess()
                "mask": torch.from_numpy(mask.astype(np.int64)),
                "name": self.samples[index].name, "index": index}
