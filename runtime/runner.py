"""The runner base class: a backend session with a lifecycle that times its own inferences.

A runner is opened (the backend loads the model), asked to ``infer`` any number of times, and
closed; it is also a context manager. Every ``infer`` is timed (wall clock around the backend
call, host<->device copies included), so callers read ``last_latency_ms``, ``mean_latency_ms`` and
``count`` without timing code of their own.

Streams: a runner whose ``streams`` is above 1 splits a batch of several images into that many parts and
runs them at once (its backend configured for it when it opens: each part on threads/streams threads),
then joins the outputs in order; one ``infer`` is still one latency record. CPU backends only
(:func:`mrdl_runtime.backends.make_runner` refuses the others).

Threads: ``infer`` may be called from several threads at once. The latency counters are updated
under a lock; a backend whose session cannot run two batches at once (``concurrent_infer = False``,
e.g. one TensorRT execution context with its device buffers) has its calls serialized by the
runner, the others (an ONNX Runtime session's ``run`` is thread-safe) run side by side. ``open``
and ``close`` are not for concurrent use: close a runner after every thread is done with it.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from .errors import BackendUnavailableError, NotOpenError
from .manifest import TensorSpec

__all__ = ["BackendUnavailableError", "LatencyStats", "NotOpenError", "Runner"]


@dataclass
class LatencyStats:
    """Timing of a runner's inferences since it was opened; safe to update from several threads."""

    count: int = 0
    total_s: float = 0.0
    last_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, seconds: float) -> None:
        with self._lock:  # three read-modify-writes: unlocked, concurrent calls lose counts
            self.count += 1
            self.total_s += seconds
            self.last_s = seconds

    @property
    def mean_ms(self) -> float:
        with self._lock:
            return 1000.0 * self.total_s / self.count if self.count else 0.0

    @property
    def last_ms(self) -> float:
        return 1000.0 * self.last_s


class Runner(ABC):
    """One inference backend session: ``open`` -> ``infer``... -> ``close``; times itself."""

    backend: str = "abstract"
    concurrent_infer: bool = True  # False: the session runs one batch at a time, so infer calls are serialized

    def __init__(self) -> None:
        self.is_open = False
        self.streams = 1  # parts a batch is split into, run at once (set before open: the backend is configured for it)
        self._pool: ThreadPoolExecutor | None = None  # the streams' threads, made on the first split batch
        self._pool_lock = threading.Lock()
        self._serial = threading.Lock()  # held around _infer when concurrent_infer is False
        self.stats = LatencyStats()
        self.input_specs: list[TensorSpec] = []  # filled by open(): the loaded graph's inputs and outputs
        self.output_specs: list[TensorSpec] = []
        self.metadata: dict[str, str] = {}  # the model file's metadata, where the backend has any

    @property
    def input_names(self) -> list[str]:
        """Names of the loaded graph's inputs."""
        return [spec.name for spec in self.input_specs]

    @property
    def output_names(self) -> list[str]:
        """Names of the loaded graph's outputs."""
        return [spec.name for spec in self.output_specs]

    @abstractmethod
    def _open(self) -> None:
        """Load the model into the backend."""

    @abstractmethod
    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: input name -> array in, output name -> array out."""

    @abstractmethod
    def _close(self) -> None:
        """Release the backend's resources."""

    def open(self) -> Runner:
        """Load the model; opening an open runner is an error (close it first)."""
        if self.is_open:
            raise RuntimeError(f"{self.backend} runner is already open")
        self._open()
        self.is_open = True
        self.stats = LatencyStats()
        return self

    def close(self) -> None:
        """Release the backend; closing a closed runner does nothing."""
        if self.is_open:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._close()
            self.is_open = False

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch and record its latency."""
        if not self.is_open:
            raise NotOpenError(f"{self.backend} runner is not open; call open() or use it as a context manager")
        with self._serial if not self.concurrent_infer else nullcontext():  # the latency excludes the wait
            start = time.perf_counter()
            outputs = self._infer_streams(feeds) if self.streams > 1 else self._infer(feeds)
            self.stats.record(time.perf_counter() - start)
        return outputs

    def _infer_streams(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``_infer`` on up to ``streams`` consecutive parts of the batch at once, outputs joined in order."""
        size = len(next(iter(feeds.values())))
        parts = min(self.streams, size)
        if parts < 2:
            return self._infer(feeds)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix=f"{self.backend}-stream")
        bounds = np.linspace(0, size, parts + 1).round().astype(int)
        futures = [self._pool.submit(self._infer, {name: array[start:end] for name, array in feeds.items()})
                   for start, end in zip(bounds[:-1], bounds[1:])]
        results = [future.result() for future in futures]
        return {name: np.concatenate([result[name] for result in results]) for name in results[0]}

    @property
    def last_latency_ms(self) -> float:
        """Latency of the latest ``infer`` in milliseconds."""
        return self.stats.last_ms

    @property
    def mean_latency_ms(self) -> float:
        """Mean ``infer`` latency since ``open`` in milliseconds (0 before the first call)."""
        return self.stats.mean_ms

    @property
    def count(self) -> int:
        """Number of ``infer`` calls since ``open``."""
        return self.stats.count

    def __enter__(self) -> Runner:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"{type(self).__name__}({state}, {self.count} inferences, mean {self.mean_latency_ms:.2f} ms)"
