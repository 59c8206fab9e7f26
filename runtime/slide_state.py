"""A slide's band-by-band results on disk, and the state that lets an interrupted run resume (docs/slides.md).

The finished grid rows go to uncompressed files (``mask.u8``, one ``prob-<c>.u8`` per class), written
at their offsets; ``state.json`` (written atomically) names the run (a key over the slide, model and
output settings), how many bands are finished and the file holding the accumulator rows carried
into the next band. The row files are fsynced before the state that counts their rows is written,
so a crash never leaves a state claiming rows that are not on disk; a resumed run checks every file
the state names (size, readability) and reads them back to continue with the same arithmetic.

One run at a time writes a slide's outputs into a folder: :func:`writing_lock` holds an exclusive lock
per output stem, and the files a run writes are made under temporary names inside its partial folder,
so that what a killed run leaves behind is removed with that folder (or by the next run's resume).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .atomic import atomic_path, is_temporary_name
from .errors import MrdlError
from .slide_reader import SlideError

STATE_VERSION = 1


@contextmanager
def writing_lock(out_dir: Path, stem: str) -> Iterator[None]:
    """Hold, for the block, the right to write ``stem``'s outputs and partial folder in ``out_dir``: an
    exclusive, non-blocking ``flock`` on ``out_dir/.<stem>.lock``. A second run writing the same stem there
    fails at once with a :class:`SlideError`. The kernel releases a lock when its process dies, so a lock
    file that a killed run leaves blocks nothing. The file is removed on exit while still locked; a run
    that locked a file removed meanwhile (its inode no longer at the path) locks the new one instead."""
    import fcntl

    path = out_dir / f".{stem}.lock"
    while True:
        handle = open(path, "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise SlideError(f"another mrdl predict-slide is writing {stem} in {out_dir} (it holds {path.name}); "
                             "wait for it to finish, or segment into another --out") from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(handle.fileno())
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            break
        handle.close()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


class UnusableState(MrdlError):
    """An interrupted run's state that cannot be continued (the message says why): the slide starts over."""


class Intermediate:
    """The band-by-band results on disk: ``mask.u8`` (grid rows, uint8), ``prob-<c>.u8`` and the
    resume state (``state.json`` naming the carry file of the overlap rows)."""

    def __init__(self, folder: Path, grid: tuple[int, int], planes: int) -> None:
        self.folder, self.grid, self.planes = folder, grid, planes
        self.names = ["mask.u8"] + [f"prob-{c}.u8" for c in range(planes)]

    def resume(self, key: str) -> tuple[int, tuple[np.ndarray, np.ndarray] | None]:
        """(bands done, carried accumulator rows) of the interrupted run ``key``, after checking every file
        the state names; raises :class:`UnusableState` saying what is missing, short or unreadable."""
        try:
            state = json.loads((self.folder / "state.json").read_text())
        except (OSError, ValueError) as exc:
            raise UnusableState(f"its state.json is missing or unreadable ({exc})") from exc
        if not isinstance(state, dict) or state.get("key") != key:
            raise UnusableState("the interrupted run's state does not match this slide, model or settings")
        done = state.get("bands_done")
        if not isinstance(done, int) or done < 0:
            raise UnusableState(f"its state.json holds bands_done={done!r}, expected a count of bands")
        self._remove_temporaries()
        expected = self.grid[0] * self.grid[1]
        for name in self.names:
            try:
                size = (self.folder / name).stat().st_size
            except OSError as exc:
                raise UnusableState(f"its {name} is missing ({exc.strerror})") from exc
            if size != expected:
                raise UnusableState(f"its {name} holds {size} bytes, expected {expected} ({self.grid[0]} rows of "
                                    f"{self.grid[1]})")
        return done, self._load_carry(state.get("carry"))

    def _load_carry(self, name: object) -> tuple[np.ndarray, np.ndarray] | None:
        """The carried rows (num (C, r, w), den (r, w) float32) saved as ``name``, checked."""
        if name is None:
            return None
        if not isinstance(name, str) or Path(name).name != name:
            raise UnusableState(f"its state.json names the carry file {name!r}, expected a file name")
        try:
            with np.load(self.folder / name) as data:
                num, den = data["num"], data["den"]
        except MemoryError:
            raise
        except Exception as exc:  # a missing, truncated or rewritten .npz: zipfile, numpy, OS errors
            raise UnusableState(f"its {name} is missing or unreadable ({type(exc).__name__}: {exc})") from exc
        if num.ndim != 3 or den.ndim != 2 or num.shape[1:] != den.shape:
            raise UnusableState(f"its {name} holds arrays of shapes {num.shape} and {den.shape}, expected "
                                "(classes, rows, width) and (rows, width)")
        return num, den

    def _remove_temporaries(self) -> None:
        """Remove the temporary files (:func:`~mrdl_runtime.atomic.is_temporary_name`) a killed run left in
        the folder: a state or carry file, an output being written. Only with the stem's lock held."""
        for leftover in self.folder.iterdir():
            if is_temporary_name(leftover.name) and leftover.is_file():
                leftover.unlink(missing_ok=True)

    def create(self) -> None:
        """Start over: an empty folder with zero-filled row files (what an earlier run left is removed)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        for name in self.names:
            with open(self.folder / name, "wb") as handle:
                handle.truncate(self.grid[0] * self.grid[1])

    def write_rows(self, first: int, mask: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Grid rows from ``first``: mask (r, w) uint8, probabilities (C, r, w) uint8 or None."""
        arrays = [mask] + ([] if probabilities is None else list(probabilities))
        for name, rows in zip(self.names, arrays):
            with open(self.folder / name, "r+b") as handle:
                handle.seek(first * self.grid[1])
                handle.write(np.ascontiguousarray(rows).tobytes())

    def read_rows(self, index: int, first: int, stop: int) -> np.ndarray:
        width = self.grid[1]
        with open(self.folder / self.names[index], "rb") as handle:
            handle.seek(first * width)
            data = np.frombuffer(handle.read((stop - first) * width), dtype=np.uint8)
        return data.reshape(stop - first, width)

    def save(self, key: str, bands_done: int, carry: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Record ``bands_done`` finished bands and the carried accumulator rows, atomically, after the
        finished rows are on disk (fsynced): the state never counts rows a crash could lose."""
        for name in self.names:
            with open(self.folder / name, "r+b") as handle:
                os.fsync(handle.fileno())
        carry_name = None
        if carry is not None:
            carry_name = f"carry-{bands_done}.npz"
            with atomic_path(self.folder / carry_name) as temporary, open(temporary, "wb") as handle:
                np.savez(handle, num=carry[0], den=carry[1])
        with atomic_path(self.folder / "state.json") as temporary:
            temporary.write_text(json.dumps({"version": STATE_VERSION, "key": key, "bands_done": bands_done,
                                             "carry": carry_name}))
        for old in self.folder.glob("carry-*.npz"):
            if old.name != carry_name:
                old.unlink()

