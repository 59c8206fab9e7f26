"""Segment image files: expand folders and globs, predict in batches, write PNG masks and overlays.

The library behind ``mrdl predict``; torch-free like the rest of the runtime. Masks are written
as 8-bit PNGs (one class: 0 / 255; several: class index scaled to 0..255) and overlays as RGB
PNGs of the image with the mask tinted in; both go to a temporary name and are renamed.

A bad image (unreadable, truncated, over the pixel limit, NaN floats, ...) is skipped or stops the
run (``on_error``); the summary names each failed file and why. The output folder is held with an
exclusive lock (``OUT/.mrdl-predict.lock``) for the whole run, and ``OUT/predict.json`` records
which model wrote its masks, so two runs or two models never mix their outputs in one folder.
Ctrl-C waits while one image's overlay and mask are written, so the record matches the files.
Large images stay within about three image-sized buffers: masks are resized and thresholded in
row strips, overlays are tinted in place strip by strip (:func:`mrdl_runtime.imaging.mask_at_size`).
Images much larger than the model's training images are segmented in windows at the training scale
(``tile``, docs/tiling.md); ``predict.json`` records per image whether it was (``"tiled"``).
The settings are one :class:`~mrdl_runtime.options.PredictOptions`, handed whole to the segmenter
(in-process, or a :class:`~mrdl_runtime.RemoteSegmenter` that sends them to the server).
"""

from __future__ import annotations

import errno
import glob
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from .atomic import atomic_path, uninterruptible
from .errors import MrdlError, OptionsError
from .imaging import IMAGE_SUFFIXES, read_image
from .options import PredictOptions
from .resample import STRIP_BYTES
from .segmenter import Segmenter

OVERLAY_COLOURS = np.array([[0, 255, 0], [255, 0, 0], [0, 128, 255], [255, 200, 0], [255, 0, 255]], dtype=np.float32)
OVERLAY_ALPHA = 0.45
ON_ERROR = ("skip", "stop")
# errors writing an image's outputs that every later image would meet too: the command's, not the image's
EVERY_IMAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)
LOCK_NAME = ".mrdl-predict.lock"
RECORD_NAME = "predict.json"
RECORD_FORMAT = "mrdl-predict/1"
BATCH_PIXELS = 16_000_000  # a batch is cut early once its images hold this many pixels (bounded memory)
CLAIM_AHEAD = 64  # predict.json names at least this many upcoming outputs each time it is written ahead


class InputFilesError(MrdlError, ValueError):
    """Input paths that name no images, or images that cannot be read."""


class OutputFolderError(MrdlError, RuntimeError):
    """An --out folder in use by another run, or holding another model's outputs."""


@dataclass(frozen=True)
class FailedImage:
    """An input image that was not segmented, and why."""

    path: Path
    reason: str


class PredictInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`predict_files`; ``written`` images were completed before it."""

    def __init__(self, written: int, out_dir: Path) -> None:
        super().__init__(f"interrupted after {written} images were written to {out_dir}")
        self.written = written
        self.out_dir = out_dir


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict_files` did: counts, failures, where, with which backend, and how fast."""

    n_images: int  # segmented and written
    n_inputs: int
    out_dir: Path
    backend: str
    precision: str
    batches: int
    mean_batch_latency_ms: float  # model only, per call of up to max_batch images, since the model was loaded
    total_s: float  # reading, preprocessing, inference, postprocessing and writing
    failed: tuple[FailedImage, ...] = field(default=())
    stopped: bool = False  # on_error="stop" ended the run at the first failure
    tiled: tuple[str, ...] = field(default=())  # stems segmented in windows at the training scale

    @property
    def per_image_ms(self) -> float:
        return 1000.0 * self.total_s / self.n_images if self.n_images else 0.0

    def line(self) -> str:
        """One summary sentence for the terminal."""
        return (f"{self.n_images} images -> {self.out_dir} (masks/, overlays/) | backend {self.backend} "
                f"{self.precision} | model latency {self.mean_batch_latency_ms:.1f} ms per batch "
                f"({self.batches} batches) | {self.per_image_ms:.1f} ms per image end to end")

    def tiling_line(self) -> str:
        """Which images were tiled (docs/tiling.md) and which were resized whole to the model size."""
        whole = self.n_images - len(self.tiled)
        if not self.tiled:
            return f"tiling: none ({whole} images resized whole to the model size)"
        names = ", ".join(self.tiled[:5]) + (f", ... ({len(self.tiled) - 5} more)" if len(self.tiled) > 5 else "")
        return f"tiling: {len(self.tiled)} images in windows at the training scale ({names}), {whole} whole"

    def failure_lines(self) -> list[str]:
        """One line per failed file (empty when every image was segmented)."""
        if not self.failed:
            return []
        head = f"{len(self.failed)} of {self.n_inputs} images failed"
        if self.stopped:
            rest = self.n_inputs - self.n_images - len(self.failed)
            head += f"; stopped at the first (--on-error stop), {rest} not attempted"
        return [head + ":", *(f"  {one_line(f.path)}: {one_line(f.reason)}" for f in self.failed)]


def one_line(text: object) -> str:
    """``text`` with its control characters escaped (a newline in a file name would forge a summary line)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files, folders (their images, not recursive) and glob patterns -> sorted unique image paths."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise InputFilesError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(str(item)):
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True) if Path(p).is_file())
            if not matches:
                raise InputFilesError(f"no files match the pattern {item}")
        else:
            raise InputFilesError(f"{item} is neither a file, a folder nor a glob pattern that matches files")
        found.update(dict.fromkeys(matches))
    if not found:
        raise InputFilesError("no input images given")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems:
            raise InputFilesError(f"{stems[path.stem]} and {path} would both write {path.stem}.png; "
                                  "predict them into separate --out folders")
        stems[path.stem] = path
    return list(found)


def mask_to_png(mask: np.ndarray, n_classes: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """(H, W) class indices -> uint8 grey levels: 0 / 255 for one class, evenly spaced for several.

    ``out=mask`` scales in place (labels < n_classes <= 255, so label * step never exceeds 255)."""
    step = np.uint8(255 // max(n_classes - 1, 1))
    return np.multiply(mask.astype(np.uint8, copy=False), step, out=out)


def tint(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint each foreground class of ``mask`` into ``image`` (HxWx3 uint8) in place, in row strips; returns it."""
    rows = max(1, STRIP_BYTES // (12 * image.shape[1]))
    for start in range(0, len(image), rows):
        labels, block = mask[start:start + rows], image[start:start + rows]
        for label in np.unique(labels[labels > 0]):
            where = labels == label
            colour = OVERLAY_COLOURS[(int(label) - 1) % len(OVERLAY_COLOURS)]
            blended = (1 - OVERLAY_ALPHA) * block[where].astype(np.float32) + OVERLAY_ALPHA * colour
            block[where] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return image


def write_png(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as a PNG through a temporary file renamed onto ``path``."""
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _write_record(out_dir: Path, record: dict) -> None:
    with atomic_path(out_dir / RECORD_NAME) as tmp, open(tmp, "w") as stream:
        json.dump(record, stream, indent=2)


@contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive, non-blocking flock on OUT/.mrdl-predict.lock for the block."""
    import fcntl

    with open(out_dir / LOCK_NAME, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise OutputFolderError(f"{out_dir} is in use by another mrdl predict run (it holds {LOCK_NAME}); "
                                    "wait for it to finish or choose another --out") from exc
        yield


def _claim(out_dir: Path, model: dict, overwrite: bool) -> list[str]:
    """Check OUT against the model about to write there; returns the stems already written by it.

    OUT may hold outputs of the same export and precision (a rerun). Another model's recorded
    outputs are refused, or with ``overwrite`` deleted first; unrecorded PNGs are refused unless
    ``overwrite`` (they are then kept, and replaced only where a name is written again).
    """
    record_path = out_dir / RECORD_NAME
    advice = "predict into another --out, or pass --overwrite to replace them"
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            previous, stems = record["model"], record["outputs"]
            if not (isinstance(previous, dict) and isinstance(stems, list) and all(isinstance(s, str) for s in stems)):
                raise ValueError("its 'model' must be an object and its 'outputs' a list of file stems")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            if not overwrite:
                raise OutputFolderError(f"{record_path} is unreadable ({exc}), so the outputs in {out_dir} "
                                        f"cannot be told apart from this model's; {advice}") from exc
            return []
        same = (previous.get("export_id"), previous.get("precision")) == (model["export_id"], model["precision"])
        if same:  # a run killed outright may have named masks it never wrote (predict_files writes ahead)
            return [stem for stem in stems if (out_dir / "masks" / f"{Path(stem).name}.png").is_file()]
        if not overwrite:
            raise OutputFolderError(f"{out_dir} holds masks of another model ({previous.get('model_dir')}, export "
                                    f"{previous.get('export_id')}, {previous.get('precision')}); {advice}")
        for stem in stems:
            for kind in ("masks", "overlays"):
                (out_dir / kind / f"{Path(stem).name}.png").unlink(missing_ok=True)
        return []
    unrecorded = [path for kind in ("masks", "overlays") if (out_dir / kind).is_dir()
                  for path in (out_dir / kind).glob("*.png")]
    if unrecorded and not overwrite:
        raise OutputFolderError(f"{out_dir} holds {len(unrecorded)} PNGs in masks/ or overlays/ but no {RECORD_NAME} "
                                f"naming the model that wrote them; {advice}")
    return []


def _read_batches(paths: list[Path], max_batch: int, max_pixels: int, stop: bool,
                  failed: list[FailedImage]) -> Iterator[list[tuple[Path, np.ndarray]]]:
    """Read images into batches of at most ``max_batch`` images / about BATCH_PIXELS pixels; record failures."""
    batch: list[tuple[Path, np.ndarray]] = []
    pixels = 0
    for path in paths:
        try:
            image = read_image(path, max_pixels=max_pixels)
        except Exception as exc:  # noqa: BLE001 - the per-image boundary: whatever one file causes is its failure
            failed.append(_failure(path, exc))
            if stop:
                break
            continue
        batch.append((path, image))
        pixels += image.shape[0] * image.shape[1]
        if len(batch) == max_batch or pixels >= BATCH_PIXELS:
            yield batch
            batch, pixels = [], 0
    if batch:
        yield batch


def _segment(segmenter: Segmenter, batch: list, options: PredictOptions, failed: list[FailedImage], *,
             stop: bool) -> list:
    """(path, image) and prediction of each image of ``batch``. A batch that fails with an MrdlError (a served
    model refusing one image, a server that timed out) is run image by image when not ``stop``, and the images
    that still fail are listed in ``failed`` while the others are segmented."""
    try:
        return list(zip(batch, segmenter.predict_batch([image for _, image in batch], options)))
    except Exception as exc:  # noqa: BLE001 - the per-image boundary: whatever one image causes is its failure
        if stop and isinstance(exc, MrdlError):
            raise
        if len(batch) == 1:
            failed.append(_failure(batch[0][0], exc))
            return []
    return [pair for item in batch for pair in _segment(segmenter, [item], options, failed, stop=stop)]


def _failure(path: Path, exc: Exception) -> FailedImage:
    """One image's failure for the summary, any exception but an interruption; an operating-system error
    that every later image would meet too (no space, read-only, permission) is raised instead, for the
    command's one-line report (mrdl_apps.errors)."""
    if isinstance(exc, OSError) and exc.errno in EVERY_IMAGE_ERRNOS:
        raise exc
    return FailedImage(path, str(exc) if isinstance(exc, MrdlError) else f"{type(exc).__name__}: {exc}")


def _recorded_tiling(out_dir: Path) -> dict[str, bool]:
    """The per-image ``"tiled"`` entries of a readable predict.json (after :func:`_claim` accepted it), else {}."""
    try:
        recorded = json.loads((out_dir / RECORD_NAME).read_text()).get("tiled", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {str(stem): bool(value) for stem, value in recorded.items()} if isinstance(recorded, dict) else {}


def predict_files(segmenter: Segmenter, inputs: Iterable[str | Path], out_dir: str | Path,
                  options: PredictOptions | None = None, *, progress: bool = True, on_error: str = "skip",
                  overwrite: bool = False, **fields) -> PredictSummary:
    """Segment every image named by ``inputs`` and write ``out_dir/masks/<stem>.png`` and
    ``out_dir/overlays/<stem>.png`` at each image's original size.

    ``options`` (:class:`PredictOptions`, or keywords naming its fields): ``max_pixels`` bounds each
    file read, the rest goes whole to ``segmenter.predict_batch`` (an in-process Segmenter or a
    served model); ``tile``, ``overlap``, ``blend`` as :meth:`Segmenter.predict_batch`
    (docs/tiling.md), and ``predict.json``'s ``"tiled"`` says per image which path ran.
    ``on_error``: "skip" (every readable image is still segmented) or "stop" (end at the first
    image that cannot be read); failures are listed in the summary. Raises
    :class:`OutputFolderError` when ``out_dir`` is in use or holds another model's outputs, and
    :class:`PredictInterrupted` on Ctrl-C.
    """
    if on_error not in ON_ERROR:
        raise OptionsError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    options = PredictOptions.of(options, **fields).with_fields(with_probabilities=False, at_model_size=False,
                                                               progress=progress)
    paths = expand_inputs(inputs)
    if not str(out_dir).strip():  # Path("") is the working directory: never the intent
        raise OutputFolderError("--out is empty; give a folder for the masks, overlays and predict.json")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"--out {out_dir} is a file; give a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = segmenter.manifest
    model = {"model_dir": str(Path(manifest.model_dir).resolve()), "export_id": manifest.export_id,
             "name": manifest.name, "precision": segmenter.precision}
    start, calls_before = time.perf_counter(), segmenter.runner.count
    failed: list[FailedImage] = []
    with _locked(out_dir):
        written = _claim(out_dir, model, overwrite)
        tiled = {stem: value for stem, value in _recorded_tiling(out_dir).items() if stem in written}
        n_before = len(written)

        def record(stems) -> dict:
            outputs = sorted(set(stems))
            return {"format": RECORD_FORMAT, "model": model, "outputs": outputs,
                    "tiling": {**options.tiling(), "source_size": manifest.source_size and list(manifest.source_size)},
                    "tiled": {stem: tiled[stem] for stem in outputs if stem in tiled}}

        claimed, order = set(written), {path: index for index, path in enumerate(paths)}
        try:
            with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
                for batch in _read_batches(paths, manifest.max_batch, options.max_pixels, on_error == "stop",
                                           failed):
                    stems = [path.stem for path, _ in batch]
                    if not claimed.issuperset(stems):
                        # the record names a batch's files before they exist (and the next ones, by doubling, so
                        # that it is rewritten log n times): a run killed outright (SIGKILL, out of memory) leaves
                        # no file that no record names; the final record lists only what was written
                        start = order[batch[0][0]]
                        ahead = paths[start:start + max(CLAIM_AHEAD, len(claimed))]
                        claimed.update(stems, (path.stem for path in ahead))
                        _write_record(out_dir, record(claimed))
                    for (path, image), prediction in _segment(segmenter, batch, options, failed,
                                                              stop=on_error == "stop"):
                        try:  # the per-image boundary (reading: _read_batches; the model: _segment)
                            overlay = tint(image if image.flags.writeable else image.copy(), prediction.mask)
                            mask = mask_to_png(prediction.mask, manifest.n_classes, out=prediction.mask)
                            with uninterruptible():
                                write_png(overlay, out_dir / "overlays" / f"{path.stem}.png")
                                write_png(mask, out_dir / "masks" / f"{path.stem}.png")
                                written.append(path.stem)
                                tiled[path.stem] = getattr(prediction, "tiled", False)
                        except Exception as exc:  # noqa: BLE001 - one image's failure (a full disk raises)
                            failed.append(_failure(path, exc))
                    bar.update(len(batch))
                    if on_error == "stop" and failed:
                        break
        except KeyboardInterrupt as exc:
            raise PredictInterrupted(len(written) - n_before, out_dir) from exc
        finally:
            _write_record(out_dir, record(written))
    return PredictSummary(n_images=len(written) - n_before, n_inputs=len(paths), out_dir=out_dir,
                          backend=segmenter.backend, precision=segmenter.precision,
                          batches=segmenter.runner.count - calls_before,
                          mean_batch_latency_ms=segmenter.mean_latency_ms, total_s=time.perf_counter() - start,
                          failed=tuple(failed),
                          stopped=on_error == "stop" and bool(failed),
                          tiled=tuple(stem for stem in written[n_before:] if tiled.get(stem)))
