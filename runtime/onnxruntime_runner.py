"""ONNX Runtime runners: CPU, CUDA and TensorRT execution providers.

onnxruntime is imported when a runner opens, not when this module is imported. ONNX Runtime
quietly falls back to the CPU when a GPU provider fails to load; the runner checks the providers
the session really got and raises :class:`BackendUnavailableError` instead, so a backend asked
for by name is the backend that runs.

Given the manifest, a runner loads its artifact through :func:`mrdl_runtime.integrity.read_artifact`
(ONNX Runtime gets the bytes that were verified) and, once loaded, checks the file's embedded
identity and its graph against ``model.json``. A file ONNX Runtime cannot load is an
:class:`IntegrityError`, not an onnxruntime traceback.

On the CPU provider, every graph gets onnxruntime's full optimizations (``ORT_ENABLE_ALL``), and
the optimized graph is kept in a cache keyed by the verified artifact's SHA-256, so that the next
load skips them (:mod:`mrdl_runtime.ort_cache`; ``optimized_cache=None`` or ``MRDL_ORT_CACHE=off``
turns it off). ``load_mode`` says how the open went.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from .integrity import check_embedded_manifest, check_graph, check_unedited_manifest, graph_spec, read_artifact
from .manifest import IntegrityError, Manifest
from .ort_cache import default_cache_dir, open_session
from .runner import BackendUnavailableError, Runner
from .threads import resolve_threads

PROVIDERS = {
    "onnxruntime-cpu": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
DEFAULT_TRT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mrdl" / "ort-tensorrt"
MALFORMED = ("InvalidProtobuf", "InvalidGraph", "InvalidArgument")  # ONNX Runtime's errors for a malformed model
# ONNX element types -> the numpy dtype names the manifest uses
ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                 "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
                 "tensor(bool)": "bool"}


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
    TensorRT EP builds and caches engines in ``cache_dir`` on first use, which takes minutes. With a
    ``manifest`` the file is artifact ``precision`` of that directory, verified on every open (the
    SHA-256 too unless ``verify=False``), and the engine cache is keyed by its recorded SHA-256:
    the TensorRT EP's own cache key ignores the weights, so two exports of one architecture would
    otherwise share an engine.
    """

    def __init__(self, onnx_path: str | Path, *, backend: str = "onnxruntime-cpu", precision: str = "fp32",
                 device_id: int = 0, intra_op_threads: int = 0,
                 trt_profile: list[tuple[str, tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None,
                 cache_dir: str | Path | None = None, manifest: Manifest | None = None, verify: bool = True,
                 optimized_cache: str | Path | None | bool = True) -> None:
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
        self.manifest = manifest
        self.verify = verify
        if manifest is not None:
            self.cache_dir = self.cache_dir / manifest.artifact(precision).sha256[:16]
        # the optimized-graph cache (CPU provider, manifest-verified artifacts): True = the default folder
        self.optimized_cache = (default_cache_dir() if optimized_cache is True
                                else Path(optimized_cache) if optimized_cache else None)
        self.load_mode = None  # "cached", "optimized and cached" or "uncached" once open
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
        # 0: one per physical core; with streams, the threads are shared among the batch's parts that run at once
        options.intra_op_num_threads = max(1, resolve_threads(self.intra_op_threads) // self.streams)
        options.log_severity_level = 3  # errors only; a provider fallback is caught below
        model = (read_artifact(self.manifest, self.precision, verify=self.verify) if self.manifest is not None
                 else str(self.onnx_path))
        try:
            if self.backend == "onnxruntime-cpu" and isinstance(model, bytes):
                source = (self.manifest.artifact(self.precision).sha256 if self.verify
                          else hashlib.sha256(model).hexdigest())  # the key is the hash of the bytes loaded
                session, self.load_mode = open_session(
                    ort, model, source_sha256=source, options=options, providers=self._provider_list(),
                    folder=self.optimized_cache, graph_options={"graph_optimization_level": "ORT_ENABLE_ALL"},
                    check=self._check_session)  # a cached graph that is not this model's is rebuilt
            else:
                session = ort.InferenceSession(model, sess_options=options, providers=self._provider_list())
                self.load_mode = "uncached"
        except _load_errors(ort) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = ("the file is corrupt or not an ONNX model: re-export it" if type(exc).__name__ in MALFORMED
                    else f"if backend onnxruntime-cpu loads it, {self.backend}'s libraries are at fault; "
                         "otherwise the file is corrupt: re-export it")
            raise IntegrityError(f"{self.onnx_path}: ONNX Runtime {ort.__version__} cannot load it ({reason}); "
                                 + hint) from None
        if session.get_providers()[0] != wanted:
            raise BackendUnavailableError(
                f"ONNX Runtime could not start {wanted} for backend {self.backend} (the session got "
                f"{session.get_providers()}); check the CUDA / cuDNN / TensorRT libraries and the GPU")
        self.session, self.input_specs, self.output_specs, self.metadata = session, *self._check_session(session)

    def _check_session(self, session) -> tuple[list, list, dict]:
        """The session's inputs, outputs and metadata, once its embedded manifest and graph match model.json."""
        inputs, outputs = ([graph_spec(arg.name, arg.shape, ELEMENT_TYPES.get(arg.type, arg.type)) for arg in args]
                           for args in (session.get_inputs(), session.get_outputs()))
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        if self.manifest is not None:
            check_embedded_manifest(self.manifest, self.precision, metadata)
            check_graph(self.manifest, self.precision, inputs, outputs)
            check_unedited_manifest(self.manifest, self.precision, metadata)
        return inputs, outputs, metadata

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(self.output_names, feeds)
        return dict(zip(self.output_names, outputs))

    def _close(self) -> None:
        self.session = None


def _load_errors(ort) -> tuple[type[BaseException], ...]:
    """The exceptions ONNX Runtime raises for a model it cannot parse or build a session for."""
    state = ort.capi.onnxruntime_pybind11_state
    names = (*MALFORMED, "Fail", "NoSuchFile", "NotImplemented", "RuntimeException")
    return tuple(getattr(state, name) for name in names if hasattr(state, name))
