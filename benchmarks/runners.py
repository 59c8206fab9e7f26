"""Benchmark runners: one per ``mrdl-bench`` backend, with a lifecycle (activate -> infer ... ->
deactivate) that times itself.

A :class:`BenchRunner` is not an ``mrdl_runtime.Runner``: it serves PyTorch backends too, takes
one array and keeps every iteration's time (the report's percentiles). Every runner maps a
preprocessed batch (B, 3, S, S) float32 to probabilities (B, n_classes, S, S) float32 as a numpy
array. ``infer`` records its own wall time in ``inference_times``; runners that use a GPU
synchronise before the clock stops. The ONNX Runtime and TensorRT backends are ``mrdl_runtime``
Segmenters behind an adapter (:class:`RuntimeRunner`), loaded as every user loads them, so the
runtime's integrity checks apply (a file that does not match ``model.json`` raises
``IntegrityError``); heavy backends are imported when a runner activates, so a missing one only
skips that runner, with the reason (``mrdl_runtime.BackendUnavailableError``).
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from mrdl_runtime.backends import REGISTRY
from mrdl_runtime.errors import BackendUnavailableError
from mrdl_runtime.options import LoadOptions

TORCH_PHASE = {"torch-fft": "fft", "torch-matmul": "matmul", "torch-compile": "fft"}
# bench name -> (runtime backend, precision; None: the engine's own), from the runtime's backend registry
RUNTIME_BACKEND = {name: (backend.name, precision) for backend in REGISTRY.values() for name, precision in backend.bench}
NNCF_DEFAULT = "ov-nncf-default"  # a reference, not a deploy path: NNCF's default INT8 of model.onnx, ungated
BENCH_BACKENDS = (*TORCH_PHASE, *RUNTIME_BACKEND, NNCF_DEFAULT)


class BenchRunner(ABC):
    """One benchmarked backend. Use as a context manager, or call ``activate`` / ``deactivate`` yourself."""

    name: str
    precision: str = "fp32"  # the precision of the model this runner loads
    uses_cuda: bool = False

    def __init__(self) -> None:
        self.inference_times: list[float] = []  # seconds, one per ``infer`` call
        self.activation_seconds = 0.0
        self.is_active = False

    @property
    @abstractmethod
    def model_path(self) -> Path:
        """The file this runner loads (its size on disk is reported)."""

    @abstractmethod
    def _activate(self) -> None:
        """Load the model; raise :class:`~mrdl_runtime.BackendUnavailableError` when it cannot run here."""

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """(B, 3, S, S) float32 -> (B, n_classes, S, S) float32 probabilities."""

    def _deactivate(self) -> None:
        """Release what ``_activate`` loaded."""

    def _synchronize(self) -> None:
        if self.uses_cuda:
            import torch

            torch.cuda.synchronize()

    def activate(self) -> "BenchRunner":
        start = time.perf_counter()
        self._activate()
        self.activation_seconds = time.perf_counter() - start
        self.is_active = True
        return self

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch and record how long it took (GPU work included: synchronised)."""
        if not self.is_active:
            raise RuntimeError(f"runner {self.name} is not active; call activate() first")
        start = time.perf_counter()
        probabilities = self._infer(batch)
        self._synchronize()
        self.inference_times.append(time.perf_counter() - start)
        return probabilities

    def deactivate(self) -> None:
        self._deactivate()
        self.is_active = False

    def __enter__(self) -> "BenchRunner":
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    @property
    def model_size_bytes(self) -> int:
        return self.model_path.stat().st_size


class TorchRunner(BenchRunner):
    """PyTorch eager (``fft`` or ``matmul`` phase) or torch.compile of the eager model, eval mode."""

    def __init__(self, name: str, *, ckpt: Path, phase: str, device: str = "cpu", compile_model: bool = False) -> None:
        super().__init__()
        self.name, self.ckpt, self.phase, self.device = name, Path(ckpt), phase, device
        self.compile_model = compile_model
        self.uses_cuda = device.startswith("cuda")
        self.compile_seconds: float | None = None
        self.model: Any = None

    @property
    def model_path(self) -> Path:
        return self.ckpt

    def _activate(self) -> None:
        import torch

        from mrdl.checkpoint import load_checkpoint

        if self.uses_cuda and not torch.cuda.is_available():
            raise BackendUnavailableError(f"torch has no CUDA device here (device {self.device!r} requested)")
        model, _ = load_checkpoint(self.ckpt, phase=self.phase)
        model = model.eval().to(self.device)
        self.model = model
        if self.compile_model:
            self._compile(model)

    def _compile(self, model: Any) -> None:
        """torch.compile and run once (the compilation happens there); any failure skips the runner."""
        import torch

        size = model.config.model.image_size
        start = time.perf_counter()
        try:
            compiled = torch.compile(model)
            with torch.inference_mode():
                compiled(torch.zeros(1, 3, size, size, device=self.device))
        except Exception as exc:  # the compiler fails in many ways (no C++ compiler, unsupported op, ...)
            first_line = (str(exc).strip().splitlines() or [""])[0][:300]
            raise BackendUnavailableError(f"torch.compile failed: {type(exc).__name__}: {first_line}") from exc
        self.compile_seconds = time.perf_counter() - start
        self.model = compiled

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from mrdl.losses import probabilities

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(batch).to(self.device)).logits  # (B, n_classes, S, S)
            return probabilities(logits).float().cpu().numpy()

    def _deactivate(self) -> None:
        self.model = None


class RuntimeRunner(BenchRunner):
    """An ``mrdl_runtime`` backend (ONNX Runtime CPU / CUDA EP, native TensorRT) on one artifact.

    ``Segmenter.load`` checks that the backend can run here and that the artifact matches
    ``model.json`` (size, SHA-256, embedded export and precision, graph inputs/outputs) and owns
    the session; this adapter gives it the benchmark's array-in, array-out interface.
    """

    def __init__(self, name: str, *, model_dir: Path, backend: str, precision: str | None, threads: int,
                 streams: int = 1) -> None:
        super().__init__()
        self.name, self.model_dir, self.threads, self.streams = name, Path(model_dir), threads, streams
        self.backend, self.precision = backend, precision or "fp32"
        self.engine_precision = precision is None  # the precision the engine was built with, read on activation
        self.uses_cuda = False  # the runtime's runners copy results back to the host, which waits for the GPU
        self.segmenter: Any = None

    @functools.cached_property
    def manifest(self) -> Any:
        """The model directory's manifest (``mrdl_runtime.Manifest``), read once."""
        from mrdl_runtime.manifest import load_manifest

        return load_manifest(self.model_dir)

    @property
    def model_path(self) -> Path:
        return self.manifest.artifact_path(REGISTRY[self.backend].artifact_key(self.precision))

    def _activate(self) -> None:
        from mrdl_runtime.backends import engine_precision
        from mrdl_runtime.segmenter import Segmenter

        manifest = self.manifest
        if self.engine_precision:
            self.precision = engine_precision(manifest) or "fp32"
        self.segmenter = Segmenter.load(self.model_dir, LoadOptions(backend=self.backend, precision=self.precision,
                                                                    threads=self.threads, streams=self.streams))  # unavailable: skipped
        self.precision = self.segmenter.precision  # what the verified artifact holds
        self.input_name = manifest.image_input.name
        self.output_name = manifest.outputs[0].name

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.segmenter.runner.infer({self.input_name: batch})[self.output_name]  # (B, n_classes, S, S)

    def _deactivate(self) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
        self.segmenter = None


class NncfDefaultRunner(BenchRunner):
    """OpenVINO INT8 as a user gets it without this project: NNCF's default post-training quantization.

    A reference row, not a deploy path. ``model.onnx`` (read through the manifest, so verified) goes
    through ``nncf.quantize`` with its defaults (mixed preset, no ignored scope, no accuracy gate: the
    phase spectrum and attention products are quantized too) on ``calibration`` images, and runs on
    OpenVINO's CPU plugin with the settings of the runtime's own INT8 runner (hint f32 for float work,
    latency hint, ``threads``, compiled per static batch size). Calibrating on the benchmark's own images
    flatters its agreement, if anything.
    """

    name = NNCF_DEFAULT
    precision = "int8"

    def __init__(self, *, model_dir: Path, threads: int, calibration: np.ndarray) -> None:
        super().__init__()
        self.model_dir, self.threads, self.calibration = Path(model_dir), threads, calibration
        self.quantized: Any = None
        self.compiled: dict[int, Any] = {}

    @functools.cached_property
    def manifest(self) -> Any:
        from mrdl_runtime.manifest import load_manifest

        return load_manifest(self.model_dir)

    @property
    def model_path(self) -> Path:
        return self.manifest.artifact_path("fp32")

    def _activate(self) -> None:
        import logging

        from mrdl_runtime.integrity import read_artifact
        from mrdl_runtime.openvino_runner import import_openvino
        from mrdl_runtime.threads import resolve_threads

        ov = import_openvino()
        try:
            import nncf
        except ImportError as exc:
            raise BackendUnavailableError("nncf is not installed; pip install 'mrdl[openvino]'") from exc
        self._ov, self._core = ov, ov.Core()
        model = self._core.read_model(read_artifact(self.manifest, "fp32"))
        self.input_name = self.manifest.image_input.name
        self.output_name = self.manifest.outputs[0].name
        model.reshape({self.input_name: [1, *self.calibration.shape[1:]]})
        logging.getLogger("nncf").setLevel(logging.ERROR)
        samples = [{self.input_name: self.calibration[i:i + 1]} for i in range(len(self.calibration))]
        self.quantized = nncf.quantize(model, nncf.Dataset(samples), subset_size=len(samples))
        self.config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": resolve_threads(self.threads)}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        size = len(batch)
        if size not in self.compiled:
            model = self.quantized.clone()
            model.reshape({self.input_name: [size, *batch.shape[1:]]})
            self.compiled[size] = self._core.compile_model(model, "CPU", self.config).create_infer_request()
        results = self.compiled[size].infer({self.input_name: batch})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return np.array(by_name[self.output_name], copy=True)

    def _deactivate(self) -> None:
        self.quantized, self.compiled = None, {}


def make_bench_runner(name: str, *, ckpt: Path, model_dir: Path, threads: int, device: str = "cpu",
                      calibration: np.ndarray | None = None, streams: int = 1) -> BenchRunner:
    """The (inactive) runner for backend ``name`` (one of :data:`BENCH_BACKENDS`); ``calibration``: images (B, 3, S, S)
    for :data:`NNCF_DEFAULT`; ``streams``: the CPU runtime backends' (:class:`mrdl_runtime.LoadOptions`)."""
    if name in TORCH_PHASE:
        return TorchRunner(name, ckpt=ckpt, phase=TORCH_PHASE[name], device=device,
                           compile_model=name == "torch-compile")
    if name in RUNTIME_BACKEND:
        backend, precision = RUNTIME_BACKEND[name]
        cpu = REGISTRY[backend].device == "cpu"
        return RuntimeRunner(name, model_dir=model_dir, backend=backend, precision=precision, threads=threads,
                             streams=streams if cpu else 1)
    if name == NNCF_DEFAULT:
        if calibration is None:
            raise ValueError(f"backend {name} needs calibration images")
        return NncfDefaultRunner(model_dir=model_dir, threads=threads, calibration=calibration)
    raise ValueError(f"unknown backend {name!r}; expected some of {', '.join(BENCH_BACKENDS)}")
