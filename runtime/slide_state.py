"""A slide's band-by-band results on disk, and the state that lets an interrupted run resume (docs/slides.md).

The finished grid rows go to uncompressed files (``mask.u8``, one ``prob-<c>.u8`` per class), written
at their offsets; ``state.json`` (written atomically) names the run (a key over the slide, model and
output settings), how many bands are finished and the file holding the accumulator rows carried
into the next band. A resumed run reads them back and continues with the same arithmetic.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .atomic import atomic_path

STATE_VERSION = 1


class Intermediate:
    """The band-by-band results on disk: ``mask.u8`` (grid rows, uint8), ``prob-<c>.u8`` and the
    resume state (``state.json`` naming the carry file of the overlap rows)."""

    def __init__(self, folder: Path, grid: tuple[int, int], planes: int) -> None:
        self.folder, self.grid, self.planes = folder, grid, planes
        self.names = ["mask.u8"] + [f"prob-{c}.u8" for c in range(planes)]

    def state(self, key: str) -> dict | None:
        path = self.folder / "state.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if state.get("key") != key or any(not (self.folder / name).is_file() for name in self.names):
            return None
        return state

    def create(self) -> None:
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
        """Record ``bands_done`` finished bands and the carried accumulator rows, atomically."""
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

    def carry(self, state: dict) -> tuple[np.ndarray, np.ndarray] | None:
        if not state.get("carry"):
            return None
        with np.load(self.folder / state["carry"]) as data:
            return data["num"], data["den"]
