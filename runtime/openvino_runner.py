"""OpenVINO runner: the exported ONNX files on Intel's CPU runtime (pip install 'mrdl[openvino]').

openvino is imported when a runner opens, never when this module is imported. The runner follows
the ONNX Runtime runner's integrity pattern: given the manifest, it reads the artifact through
:func:`mrdl_runtime.integrity.read_artifact` (size and, unless ``verify=False``, SHA-256 checked)
and hands OpenVINO exactly those bytes; once read, the file's embedded identity (the
``mrdl.manifest`` metadata, which OpenVINO keeps in the model's ``framework`` rt_info) and its
graph's inputs and outputs are checked against ``model.json``.

Precisions (:data:`PRECISIONS`):

* ``fp32``: ``model.onnx`` with ``INFERENCE_PRECISION_HINT`` f32. OpenVINO's own default on a CPU
  with BF16 is bf16, which would change the masks without anyone asking; the runner always sets
  the hint.
* ``bf16``: the same ``model.onnx`` computed in bfloat16 (hint bf16), no calibration step. Only where
  the CPU has native BF16 (AVX512_BF16 or AMX, OpenVINO's ``OPTIMIZATION_CAPABILITIES`` lists
  ``BF16``); elsewhere OpenVINO would emulate it slower than FP32, so the runner refuses with
  :class:`BackendUnavailableError`.
* ``int8``: ``model.int8.onnx`` (a QDQ graph: either recipe of ``mrdl-export --int8-target``,
  ``openvino`` being NNCF's) with the hint f32 for what stays float. Its channels-last upsampling
  rearrangements and channel LayerNorms' transposes are rewritten before compiling (about 10 %
  faster here; :mod:`mrdl_runtime.openvino_rewrites`).

``hint``: OpenVINO's ``PERFORMANCE_HINT``, ``latency`` (one request at a time uses every thread:
``mrdl predict``) or ``throughput`` (several streams for concurrent requests: ``mrdl serve``).
``threads``: ``INFERENCE_NUM_THREADS``; 0 is :func:`mrdl_runtime.threads.default_threads`. With ``streams``
above 1 (:class:`mrdl_runtime.runner.Runner`), the throughput hint and ``NUM_STREAMS`` = streams: the batch's
parts run at once, each on its own stream and infer request.

Static batch: the graph is compiled once per batch size it is called with (the first call of a
size compiles, later ones reuse it; at most ``max_batch`` sizes). OpenVINO's CPU plugin runs static
shapes faster, and OpenVINO 2026.4 computes wrong masks from INT8 QDQ graphs of this model compiled
with a dynamic batch (mask agreement 0.0 with ONNX Runtime on a trained model; docs/openvino.md),
while the same graph compiled per batch size agrees. Each calling thread gets its own infer
requests, so one runner serves several threads at once.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from .integrity import check_embedded_manifest, check_graph, graph_spec, read_artifact
from .manifest import METADATA_KEY, IntegrityError, Manifest
from . import openvino_rewrites
from .runner import BackendUnavailableError, Runner
from .threads import resolve_threads

BACKEND = "openvino-cpu"
PRECISIONS = ("fp32", "bf16", "int8")
ARTIFACT_OF = {"fp32": "fp32", "bf16": "fp32", "int8": "int8"}  # precision -> the model.json artifact it runs
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # OpenVINO's INFERENCE_PRECISION_HINT
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
INSTALL = "pip install 'mrdl[openvino]'"
# OpenVINO element type names -> the numpy dtype names the manifest uses
ELEMENT_TYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32", "i8": "int8",
                 "u8": "uint8", "boolean": "bool"}


def import_openvino():
    """Import openvino or say how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailableError(f"openvino is not installed; {INSTALL}") from exc
    return openvino


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin says this CPU computes natively (``FP32``, ``INT8``, ``BF16``, ...)."""
    return list(import_openvino().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_unavailable() -> str | None:
    """Why BF16 inference cannot run at full speed here (no AVX512_BF16 / AMX), None where it can."""
    capabilities = cpu_capabilities()
    if "BF16" in capabilities:
        return None
    return (f"this CPU has no native BF16 (AVX512_BF16 or AMX; OpenVINO reports {', '.join(capabilities)}), where "
            "bf16 would be emulated slower than fp32; run precision fp32 or int8")


def unavailable_reason(manifest: Manifest, backend: str, precision: str) -> str | None:
    """Why the OpenVINO backend cannot serve ``manifest`` at ``precision`` here; None when it can."""
    if precision not in PRECISIONS:
        return f"{backend} runs {', '.join(PRECISIONS)}, not {precision}"
    key = ARTIFACT_OF[precision]
    if key not in manifest.artifacts:
        return f"{manifest.model_dir} has no {key} ONNX model (it lists {sorted(manifest.artifacts)})"
    try:
        import_openvino()
    except BackendUnavailableError as exc:
        return str(exc)
    return bf16_unavailable() if precision == "bf16" else None


def open_runner(manifest: Manifest, backend: str, precision: str, options) -> OpenVinoRunner:
    """The registry's entry point: the (closed) runner for ``manifest`` at ``precision`` with ``options``'
    threads and verification (:class:`mrdl_runtime.options.LoadOptions`), latency hint."""
    return OpenVinoRunner(manifest.artifact_path(ARTIFACT_OF[precision]), precision=precision, manifest=manifest,
                          verify=options.verify, threads=options.threads)


class OpenVinoRunner(Runner):
    """Runs an exported ONNX file with OpenVINO on the CPU at ``precision`` (:data:`PRECISIONS`).

    With a ``manifest`` the file is the precision's artifact of that directory, verified on every
    open (the SHA-256 too unless ``verify=False``); without one, ``onnx_path`` is read as it is.
    """

    backend = BACKEND

    def __init__(self, onnx_path: str | Path, *, precision: str = "fp32", manifest: Manifest | None = None,
                 verify: bool = True, threads: int = 0, hint: str = "latency") -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if hint not in HINTS:
            raise ValueError(f"hint must be one of {', '.join(HINTS)}, got {hint!r}")
        self.onnx_path = Path(onnx_path)
        self.precision = precision
        self.artifact = ARTIFACT_OF[precision]
        self.manifest = manifest
        self.verify = verify
        self.threads = resolve_threads(threads)
        self.hint = hint
        self.rewrites: dict[str, int] = {}  # rewrite -> how many places (mrdl_runtime.openvino_rewrites)
        self.compiled: dict = {}  # batch size -> compiled model
        self._compile_lock = threading.Lock()
        self._local = threading.local()  # per calling thread: batch size -> infer request

    def _open(self) -> None:
        ov = import_openvino()
        if self.precision == "bf16":
            reason = bf16_unavailable()
            if reason:
                raise BackendUnavailableError(f"{BACKEND} cannot run bf16 here: {reason}")
        data = (read_artifact(self.manifest, self.artifact, verify=self.verify) if self.manifest is not None
                else self.onnx_path.read_bytes())
        core = ov.Core()
        try:
            model = core.read_model(data)
        except RuntimeError as exc:
            reason = _reason(exc)
            raise IntegrityError(f"{self.onnx_path}: OpenVINO {ov.__version__} cannot read it ({reason[:200]}); "
                                 "the file is corrupt or not an ONNX model: re-export it") from None
        metadata = _onnx_metadata(model)
        inputs, outputs = ([graph_spec(port.get_any_name(), _dims(port), _dtype(port)) for port in ports]
                           for ports in (model.inputs, model.outputs))
        if self.manifest is not None:
            check_embedded_manifest(self.manifest, self.artifact, metadata)
            check_graph(self.manifest, self.artifact, inputs, outputs)
        # INT8 only: in float the rewrite is slower (openvino_rewrites' docstring)
        self.rewrites = openvino_rewrites.rewrite_int8(model) if self.precision == "int8" else {}
        self._core, self._model, self._version = core, model, ov.__version__
        self.input_specs, self.output_specs, self.metadata = inputs, outputs, metadata
        self.compiled, self._local = {}, threading.local()
        self._compiled_for(1)  # compile now: a graph OpenVINO cannot compile fails at open, not at the first call

    def _compiled_for(self, batch: int):
        """The model compiled for ``batch`` images (compiled on first use, then kept)."""
        compiled = self.compiled.get(batch)
        if compiled is not None:
            return compiled
        with self._compile_lock:
            if batch not in self.compiled:
                model = self._model.clone()
                model.reshape({port.get_any_name(): [batch, *list(port.get_partial_shape())[1:]]
                               for port in model.inputs})
                config = {"INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[self.precision],
                          "PERFORMANCE_HINT": HINTS[self.hint], "INFERENCE_NUM_THREADS": self.threads}
                if self.streams > 1:  # the batch's parts run at once, one per stream, sharing the threads
                    config.update({"PERFORMANCE_HINT": HINTS["throughput"], "NUM_STREAMS": self.streams})
                try:
                    self.compiled[batch] = self._core.compile_model(model, "CPU", config)
                except RuntimeError as exc:
                    reason = _reason(exc)
                    raise BackendUnavailableError(
                        f"OpenVINO {self._version} cannot compile {self.onnx_path} for the CPU at batch {batch} "
                        f"({reason}); run it with backend onnxruntime-cpu") from None
        return self.compiled[batch]

    def _request(self, batch: int):
        requests = getattr(self._local, "requests", None)
        if requests is None:
            requests = self._local.requests = {}
        if batch not in requests:
            requests[batch] = self._compiled_for(batch).create_infer_request()
        return requests[batch]

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(next(iter(feeds.values())))
        results = self._request(batch).infer({name: np.ascontiguousarray(array) for name, array in feeds.items()})
        by_name = {port.get_any_name(): value for port, value in results.items()}
        return {name: np.array(by_name[name], copy=True) for name in self.output_names}  # the request reuses its buffers

    def _close(self) -> None:
        self.compiled, self._model, self._core = {}, None, None
        self._local = threading.local()

    @property
    def settings(self) -> dict[str, object]:
        """What the compiled model really runs with (OpenVINO's own properties), for reports."""
        if not self.compiled:
            return {}
        compiled = next(iter(self.compiled.values()))
        names = ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS")
        values = {name: compiled.get_property(name) for name in names}
        settings = {name: value.get_type_name() if hasattr(value, "get_type_name") else str(value)
                    for name, value in values.items()}
        if any(self.rewrites.values()):
            settings["rewrites"] = ", ".join(f"{name} x{count}" for name, count in self.rewrites.items() if count)
        return settings


def _onnx_metadata(model) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO's ONNX reader keeps under rt_info ``framework``."""
    info = model.get_rt_info()
    if "framework" not in info:
        return {}
    framework = info["framework"]
    framework = framework.astype(dict) if hasattr(framework, "astype") else framework  # OVAny in older releases
    return {str(key): str(value.astype(str) if hasattr(value, "astype") else value)
            for key, value in dict(framework).items() if key == METADATA_KEY}


def _dims(port) -> tuple[object, ...]:
    return tuple(dim.get_length() if dim.is_static else "?" for dim in port.get_partial_shape())


def _dtype(port) -> str:
    name = port.get_element_type().get_type_name()
    return ELEMENT_TYPES.get(name, name)


def _reason(exc: Exception) -> str:
    """OpenVINO's own message without its "Exception from <source file>" lines, shortened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("Exception from")]
    return (" ".join(lines) or type(exc).__name__)[:300]
