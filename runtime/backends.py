"""The backend registry: one table of the backends that run a model directory, and the choice among them.

Each entry (:class:`Backend`) says what the backend runs (which exported precisions, from which
artifact), on which device, whether ``auto`` may pick it, and how to open it: ``open`` and
``unavailable`` are ``"module:function"`` names inside :mod:`mrdl_runtime`, imported only when the
backend is asked about, so a missing library costs nothing until then. The segmenter, the
commands' ``--backend`` choices (through :class:`mrdl_runtime.options.LoadOptions`) and
``mrdl-bench`` all read this table. Adding a backend is one module (its runner, an
``open_runner(manifest, backend, precision, options)`` and an ``unavailable_reason(manifest,
backend, precision)``) and one entry in :data:`REGISTRY`.

A backend asked for by name must be able to run here, or :class:`BackendUnavailableError` says
what is missing; nothing falls back silently. ``auto`` walks the entries that have an
``auto_rank``, lowest first (fastest to most portable), and returns the first that can run, with a
sentence saying why each faster one could not. ``onnxruntime-tensorrt`` has none: the TensorRT EP
builds engines on first load, which takes minutes; ask for it by name (or export a native engine
with ``mrdl-export --trt``).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .errors import BackendUnavailableError, OptionsError
from .manifest import PRECISIONS, Manifest
from .runner import Runner

if TYPE_CHECKING:
    from .options import LoadOptions

AUTO = "auto"


@dataclass(frozen=True)
class Backend:
    """One row of the registry.

    ``artifact``: "onnx" runs ``model.<precision>.onnx`` (the precision asked for), "engine" runs
    the native ``model.engine`` (its precision fixed when it was built). ``auto_rank``: order in
    ``auto`` (lower first), None: never picked by ``auto``. ``bench``: the ``mrdl-bench`` backend
    names it runs as, each with the precision it loads (None: the engine's own).
    """

    name: str
    summary: str
    device: str  # "cpu" or "cuda"
    precisions: tuple[str, ...]
    open: str  # "module:function" -> Runner (closed), called as f(manifest, backend, precision, options)
    unavailable: str  # "module:function" -> why it cannot run here or None, called as f(manifest, backend, precision)
    artifact: str = "onnx"
    auto_rank: int | None = None
    bench: tuple[tuple[str, str | None], ...] = ()
    computed_from: tuple[tuple[str, str], ...] = ()  # (precision, artifact): a precision computed from another file

    def artifact_key(self, precision: str) -> str:
        """The ``model.json`` artifact this backend loads at ``precision``."""
        return "tensorrt" if self.artifact == "engine" else dict(self.computed_from).get(precision, precision)


REGISTRY: dict[str, Backend] = {entry.name: entry for entry in (
    Backend("onnxruntime-cpu", "ONNX Runtime on the CPU", "cpu", PRECISIONS,
            "mrdl_runtime.backends:open_onnxruntime", "mrdl_runtime.backends:onnxruntime_unavailable", auto_rank=2,
            bench=(("ort-fp32", "fp32"), ("ort-int8", "int8"), ("ort-fp16", "fp16"))),
    Backend("onnxruntime-cuda", "ONNX Runtime's CUDA execution provider", "cuda", PRECISIONS,
            "mrdl_runtime.backends:open_onnxruntime", "mrdl_runtime.backends:onnxruntime_unavailable", auto_rank=1,
            bench=(("ort-cuda", "fp32"),)),
    Backend("onnxruntime-tensorrt", "ONNX Runtime's TensorRT execution provider (builds engines on first load)",
            "cuda", PRECISIONS, "mrdl_runtime.backends:open_onnxruntime",
            "mrdl_runtime.backends:onnxruntime_unavailable"),
    Backend("tensorrt", "native TensorRT engine (model.engine, from mrdl-export --trt)", "cuda", PRECISIONS,
            "mrdl_runtime.backends:open_tensorrt", "mrdl_runtime.backends:tensorrt_unavailable", artifact="engine",
            auto_rank=0, bench=(("tensorrt", None),)),
    Backend("openvino-cpu", "OpenVINO on the CPU (pip install 'mrdl[openvino]'); bf16: model.onnx computed in bfloat16 "
            "where the CPU has AVX512_BF16 or AMX", "cpu", ("fp32", "bf16", "int8"),
            "mrdl_runtime.openvino_runner:open_runner", "mrdl_runtime.openvino_runner:unavailable_reason",
            bench=(("ov-fp32", "fp32"), ("ov-bf16", "bf16"), ("ov-int8", "int8")), computed_from=(("bf16", "fp32"),)),
)}
BACKENDS = tuple(REGISTRY)  # every backend's name, in the table's order
# what a runtime may be asked to run: the exported precisions and those a backend computes from one (bf16)
RUN_PRECISIONS = tuple(dict.fromkeys(precision for entry in REGISTRY.values() for precision in entry.precisions))
AUTO_ORDER = tuple(sorted((b.name for b in REGISTRY.values() if b.auto_rank is not None),
                          key=lambda name: REGISTRY[name].auto_rank))


def backend_choices() -> tuple[str, ...]:
    """What ``--backend`` accepts: "auto" and every registered backend."""
    return (AUTO, *BACKENDS)


def get_backend(name: str) -> Backend:
    """The registry entry of ``name``; :class:`OptionsError` naming the choices for an unknown one."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise OptionsError(f"backend must be 'auto' or one of {BACKENDS}, got {name!r}") from None


def _resolve(reference: str) -> Callable:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def engine_precision(manifest: Manifest) -> str | None:
    """The precision ``model.engine`` was built with (its artifact record), None without an engine."""
    record = manifest.artifacts.get("tensorrt")
    return record.precision if record else None


def tensorrt_version(manifest: Manifest) -> str | None:
    """The TensorRT version that built ``model.engine`` (``versions.tensorrt``), where the manifest records it."""
    return manifest.versions.get("tensorrt")


def unavailable_reason(manifest: Manifest, backend: str, precision: str) -> str | None:
    """Why ``backend`` cannot serve ``manifest`` at ``precision`` here; None when it can."""
    entry = get_backend(backend)
    if precision not in entry.precisions:
        return f"{backend} runs {', '.join(entry.precisions)}, not {precision}"
    return _resolve(entry.unavailable)(manifest, backend, precision)


def select_backend(manifest: Manifest, backend: str = AUTO, precision: str = "fp32") -> tuple[str, str]:
    """Return (backend name, a sentence saying why it was chosen) or raise BackendUnavailableError."""
    if precision not in RUN_PRECISIONS:
        raise OptionsError(f"precision must be one of {RUN_PRECISIONS}, got {precision!r}")
    if backend != AUTO:
        get_backend(backend)
        reason = unavailable_reason(manifest, backend, precision)
        if reason:
            raise BackendUnavailableError(f"backend {backend} ({precision}) cannot run here: {reason}")
        return backend, f"{backend} was asked for by name"
    skipped = []
    for candidate in AUTO_ORDER:
        reason = unavailable_reason(manifest, candidate, precision)
        if reason is None:
            why = "; ".join(skipped)
            return candidate, f"auto picked {candidate}" + (f" because {why}" if why else " (fastest available)")
        skipped.append(f"not {candidate}: {reason}")
    raise BackendUnavailableError(f"no backend can run {manifest.model_dir} at {precision}: " + "; ".join(skipped))


def make_runner(manifest: Manifest, backend: str, precision: str, options: LoadOptions) -> Runner:
    """The (closed) runner of a chosen backend; opening it verifies the artifact against ``model.json``
    (size and identity always, the SHA-256 too unless ``options.verify`` is False)."""
    entry = get_backend(backend)
    if options.streams > 1 and entry.device != "cpu":
        raise OptionsError(f"streams {options.streams} splits batches across CPU threads; backend {backend} runs on "
                           f"{entry.device}: leave streams at 1 or choose a CPU backend")
    runner = _resolve(entry.open)(manifest, backend, precision, options)
    runner.streams = options.streams
    return runner


# ---- the built-in backends' entry points --------------------------------------------------------------

def onnxruntime_unavailable(manifest: Manifest, backend: str, precision: str) -> str | None:
    """An ONNX Runtime backend needs the precision's ONNX file, onnxruntime, and its execution provider."""
    from .onnxruntime_runner import PROVIDERS, available_providers

    if precision not in manifest.artifacts:
        return f"{manifest.model_dir} has no {precision} ONNX model (it lists {sorted(manifest.artifacts)})"
    provider = PROVIDERS[backend]
    providers = available_providers()
    if not providers:
        return "onnxruntime is not installed (pip install 'mrdl[runtime]')"
    if provider not in providers:
        return f"this onnxruntime build has no {provider} (it has {providers}; pip install 'mrdl[runtime-gpu]')"
    return None


def open_onnxruntime(manifest: Manifest, backend: str, precision: str, options: LoadOptions) -> Runner:
    from .onnxruntime_runner import OnnxRuntimeRunner

    profile = [(spec.name, (1, *spec.fixed_shape), (manifest.max_batch, *spec.fixed_shape),
                (manifest.max_batch, *spec.fixed_shape)) for spec in manifest.inputs]
    return OnnxRuntimeRunner(manifest.artifact_path(precision), backend=backend, precision=precision,
                             device_id=options.device_id, intra_op_threads=options.threads,
                             trt_profile=profile if backend == "onnxruntime-tensorrt" else None,
                             cache_dir=options.cache_dir, manifest=manifest, verify=options.verify)


def _gpu_count() -> int:
    try:
        from .tensorrt_runner import import_tensorrt

        _, cudart = import_tensorrt()
        error, count = cudart.cudaGetDeviceCount()
    except (BackendUnavailableError, RuntimeError, OSError):
        return 0
    return int(count) if int(error) == 0 else 0


def tensorrt_unavailable(manifest: Manifest, backend: str, precision: str) -> str | None:
    """The native backend needs ``model.engine`` built at ``precision``, tensorrt and a CUDA GPU."""
    if "tensorrt" not in manifest.artifacts:
        return f"{manifest.model_dir} has no TensorRT engine (re-run mrdl-export with --trt on a GPU machine)"
    built = engine_precision(manifest)
    if built is not None and built != precision:
        return f"model.engine was built for {built}, not {precision}"
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt package is not installed (pip install 'mrdl[tensorrt]')"
    if _gpu_count() == 0:
        return "no CUDA GPU is visible (or cuda-python is missing)"
    return None


def open_tensorrt(manifest: Manifest, backend: str, precision: str, options: LoadOptions) -> Runner:
    from .tensorrt_runner import TensorRTRunner

    return TensorRTRunner(manifest.artifact_path("tensorrt"), max_batch=manifest.max_batch,
                          built_with=tensorrt_version(manifest), device_id=options.device_id, manifest=manifest,
                          verify=options.verify)
