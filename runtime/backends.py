"""Backend choice: which runner serves a model directory, and why.

A backend asked for by name must be able to run here, or :class:`BackendUnavailableError` says
what is missing; nothing falls back silently. ``auto`` walks the backends from fastest to most
portable and returns the first that can run, with a sentence saying why each faster one could not:

1. ``tensorrt``: native engine; needs ``model.engine`` in the manifest, tensorrt, cuda-python, a GPU;
2. ``onnxruntime-cuda``: needs onnxruntime-gpu with CUDAExecutionProvider;
3. ``onnxruntime-cpu``: needs onnxruntime.

``onnxruntime-tensorrt`` is never picked by ``auto``: the TensorRT EP builds engines on first load,
which takes minutes; ask for it by name (or export a native engine with ``mrdl-export --trt``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .manifest import PRECISIONS, Manifest
from .onnxruntime_runner import PROVIDERS, OnnxRuntimeRunner, available_providers
from .runner import BackendUnavailableError, Runner

BACKENDS = ("onnxruntime-cpu", "onnxruntime-cuda", "onnxruntime-tensorrt", "tensorrt")
AUTO_ORDER = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")


def engine_precision(manifest: Manifest) -> str | None:
    """The precision ``model.engine`` was built with (its artifact record), None without an engine."""
    record = manifest.artifacts.get("tensorrt")
    return record.precision if record else None


def tensorrt_version(manifest: Manifest) -> str | None:
    """The TensorRT version that built ``model.engine`` (``versions.tensorrt``), where the manifest records it."""
    return manifest.versions.get("tensorrt")


def _gpu_count() -> int:
    try:
        from .tensorrt_runner import import_tensorrt

        _, cudart = import_tensorrt()
        error, count = cudart.cudaGetDeviceCount()
    except (BackendUnavailableError, RuntimeError, OSError):
        return 0
    return int(count) if int(error) == 0 else 0


def unavailable_reason(manifest: Manifest, backend: str, precision: str) -> str | None:
    """Why ``backend`` cannot serve ``manifest`` at ``precision`` here; None when it can."""
    if backend == "tensorrt":
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
    if precision not in manifest.artifacts:
        return f"{manifest.model_dir} has no {precision} ONNX model (it lists {sorted(manifest.artifacts)})"
    provider = PROVIDERS[backend]
    providers = available_providers()
    if not providers:
        return "onnxruntime is not installed (pip install 'mrdl[runtime]')"
    if provider not in providers:
        return f"this onnxruntime build has no {provider} (it has {providers}; pip install 'mrdl[runtime-gpu]')"
    return None


def select_backend(manifest: Manifest, backend: str = "auto", precision: str = "fp32") -> tuple[str, str]:
    """Return (backend name, a sentence saying why it was chosen) or raise BackendUnavailableError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
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


def make_runner(manifest: Manifest, backend: str, precision: str, *, verify: bool = True, device_id: int = 0,
                intra_op_threads: int = 0, cache_dir: str | Path | None = None) -> Runner:
    """The (closed) runner for a chosen backend; opening it verifies the artifact against ``model.json``
    (size and identity always, the SHA-256 too unless ``verify=False``)."""
    if backend == "tensorrt":
        from .tensorrt_runner import TensorRTRunner

        return TensorRTRunner(manifest.artifact_path("tensorrt"), max_batch=manifest.max_batch,
                              built_with=tensorrt_version(manifest), device_id=device_id, manifest=manifest,
                              verify=verify)
    if backend not in PROVIDERS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    profile = [(spec.name, (1, *spec.fixed_shape), (manifest.max_batch, *spec.fixed_shape),
                (manifest.max_batch, *spec.fixed_shape)) for spec in manifest.inputs]
    return OnnxRuntimeRunner(manifest.artifact_path(precision), backend=backend, precision=precision,
                             device_id=device_id, intra_op_threads=intra_op_threads,
                             trt_profile=profile if backend == "onnxruntime-tensorrt" else None,
                             cache_dir=cache_dir, manifest=manifest, verify=verify)
