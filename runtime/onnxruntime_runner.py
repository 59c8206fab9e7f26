"""ONNX Runtime runners: CPU, CUDA and TensorRT execution providers.

onnxruntime is imported when a runner opens, not when this module is imported. ONNX Runtime
quietly falls back to the CPU when a GPU provider fails to load; the runner checks the providers
the session really got and raises :class:`BackendUnavailableError` instead, so a backend asked
for by name is the backend that runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .runner import BackendUnavailableError, Runner

PROVIDERS = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
DEFAULT_TRT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mrdl" / "ort-tensorrt"


def import_onnxruntime():
    """Import onnxruntime or say how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError("onnxruntime is not installed; pip install 'mrdl[runtime]' "
                                      "(CPU) or 'mrdl[runtime-gpu]' (CUDA / TensorRT)") from exc
    return onnxruntime


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers ([] without onnxruntime)."""
    try:
        return list(import_onnxruntime().get_available_providers())
    except BackendUnavailableError:
        return []


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file with one ONNX Runtime execution provider (CPU as the fallback for GPU ones).

    ``trt_profile`` gives the TensorRT EP its batch range as (input name, min, opt, max shapes); the
    TensorRT EP builds and caches engines in ``cache_dir`` on first use, which takes minutes.
    """

    def __init__(self, onnx_path: str | Path, *, backend: str = "onnxruntime-cpu", precision: str = "fp32",
                 device_id: int = 0, intra_op_threads: int = 0,
                 trt_profile: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
                 cache_dir: str | Path | None = None) -> None:
        super().__init__()
        if backend not in PROVIDERS:
            raise ValueError(f"backend must be one of {sorted(PROVIDERS)}, got {backend!r}")
        self.backend = backend
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.device_id = device_id
        self.intra_op_threads = intra_op_threads
        self.trt_profile = trt_profile or []
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_TRT_CACHE
        self.session = None

    def _provider_list(self) -> list:
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.backend == "onnxruntime-cpu":
            return ["CPUExecutionProvider"]
        if self.backend == "onnxruntime-cuda":
            return [cuda, "CPUExecutionProvider"]
        trt = {"device_id": self.device_id,
               "trt_fp16_enable": self.precision == "fp16",
               "trt_int8_enable": self.precision == "int8",  # QDQ graph: explicit quantisation, no calibration table
               "trt_engine_cache_enable": True,
               "trt_engine_cache_path": str(self.cache_dir),
               "trt_timing_cache_enable": True}
        if self.trt_profile:
            for index, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
                trt[key] = ",".join(f"{name}:{'x'.join(map(str, shapes[index]))}" for name, *shapes in self.trt_profile)
        return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]

    def _open(self) -> None:
        ort = import_onnxruntime()
        wanted = PROVIDERS[self.backend]
        if wanted not in ort.get_available_providers():
            raise BackendUnavailableError(
                f"backend {self.backend} needs ONNX Runtime's {wanted}, which this onnxruntime build lacks "
                f"(it has {ort.get_available_providers()}); install onnxruntime-gpu (pip install 'mrdl[runtime-gpu]') "
                "or choose backend='onnxruntime-cpu'")
        if self.backend == "onnxruntime-tensorrt":
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.intra_op_threads
        options.log_severity_level = 3  # errors only; a provider fallback is caught below
        session = ort.InferenceSession(str(self.onnx_path), sess_options=options, providers=self._provider_list())
        if session.get_providers()[0] != wanted:
            raise BackendUnavailableError(
                f"ONNX Runtime could not start {wanted} for backend {self.backend} (the session got "
                f"{session.get_providers()}); check the CUDA / cuDNN / TensorRT libraries and the GPU")
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def _close(self) -> None:
        self.session = None
