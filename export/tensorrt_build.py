"""TensorRT engine from an exported ONNX model, with the TensorRT Python API (imported lazily).

Two API lines:

* TensorRT 10: weakly typed networks by default; precision is chosen with builder flags
  (``BuilderFlag.FP16``; ``BuilderFlag.INT8`` so the QDQ nodes of an INT8 graph run in INT8).
* TensorRT 11: networks are strongly typed and the precision builder flags are gone; the
  precision comes from the graph's own types, so an FP16 engine is built from
  ``model.fp16.onnx`` and an INT8 engine from the QDQ ``model.int8.onnx``.

Both get one optimisation profile over the batch axis (min/opt/max), a workspace limit and a
timing cache that is read before and written back after the build. The engine file is the
raw serialized engine; the manifest records the TensorRT version, GPU and profile it was
built for (an engine only runs on the TensorRT version and GPU class it was built with).
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mrdl_runtime.manifest import PRECISIONS
from mrdl_runtime.runner import BackendUnavailableError


class TensorRTUnavailable(BackendUnavailableError):
    """TensorRT or a CUDA GPU is missing: the engine cannot be built on this machine (``mrdl-export`` exit 3)."""


@dataclass(frozen=True)
class EngineOptions:
    """Build options for one engine; ``opt_batch`` None means the midpoint of min and max."""

    precision: str = "fp32"
    min_batch: int = 1
    opt_batch: int | None = None
    max_batch: int = 16
    workspace_mb: int = 2048
    timing_cache: Path | None = None

    def resolved_opt_batch(self) -> int:
        return self.opt_batch if self.opt_batch is not None else max(self.min_batch, (self.min_batch + self.max_batch) // 2)

    def validate(self) -> "EngineOptions":
        """Raise ValueError naming the bad option; return self."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.min_batch < 1:
            raise ValueError(f"--min-batch must be >= 1, got {self.min_batch}")
        opt = self.resolved_opt_batch()
        if not self.min_batch <= opt <= self.max_batch:
            raise ValueError(f"batch profile must satisfy min <= opt <= max, got {self.min_batch} <= {opt} <= "
                             f"{self.max_batch}")
        if self.workspace_mb < 1:
            raise ValueError(f"--workspace must be >= 1 MiB, got {self.workspace_mb}")
        return self


def profile_shapes(inputs: dict[str, tuple[int, ...]], options: EngineOptions) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes per input; ``inputs`` maps name -> shape without the batch axis."""
    batches = (options.min_batch, options.resolved_opt_batch(), options.max_batch)
    return {name: tuple((batch, *shape) for batch in batches) for name, shape in inputs.items()}


def load_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`TensorRTUnavailable` with what to install."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailable("TensorRT is not installed (pip install 'mrdl[tensorrt]' on a machine with an "
                                  "NVIDIA GPU)") from exc


def major_version(trt: Any) -> int:
    """TensorRT's major version; versions before 10 are refused."""
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is too old; mrdl-export builds with TensorRT 10 or 11")
    return major


def detect_gpu() -> dict[str, str]:
    """Name and compute capability of CUDA device 0, or :class:`TensorRTUnavailable`."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible (TensorRT engines are built on the GPU they run on)")
    major, minor = torch.cuda.get_device_capability(0)
    return {"name": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}


def engine_source(precision: str, major: int) -> str:
    """Which exported ONNX (artifact key) an engine of ``precision`` is built from.

    INT8 always comes from the QDQ graph. FP16 on TensorRT 10 comes from the FP32 graph with the
    FP16 builder flag (TensorRT picks per layer); TensorRT 11 has no such flag, so the FP16 graph.
    """
    if precision == "int8":
        return "int8"
    if precision == "fp16" and major >= 11:
        return "fp16"
    return "fp32"


def _set_precision_flags(trt: Any, config: Any, precision: str, major: int) -> list[str]:
    """TensorRT 10: builder flags for ``precision``; TensorRT 11: none (the graph decides)."""
    if major >= 11 or precision == "fp32":
        return []
    flags = ["FP16"] if precision == "fp16" else ["INT8", "FP16"]
    for flag in flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    return flags


def build_engine(onnx_path: Path, engine_path: Path, inputs: dict[str, tuple[int, ...]], options: EngineOptions, *,
                 trt: Any = None, gpu: dict[str, str] | None = None) -> dict[str, Any]:
    """Build a serialized engine from ``onnx_path`` into ``engine_path``; return its manifest record.

    ``inputs``: input name -> shape without batch. ``trt``/``gpu`` default to the real module and
    device (tests pass stand-ins). Raises :class:`TensorRTUnavailable` without TensorRT or a GPU.
    """
    from mrdl_runtime.atomic import atomic_path

    options.validate()
    trt = trt if trt is not None else load_tensorrt()
    major = major_version(trt)
    gpu = gpu if gpu is not None else detect_gpu()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Flags 0: TensorRT 10 makes explicit-batch, weakly typed networks; TensorRT 11 only strongly typed ones.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {'; '.join(errors)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mb << 20)
    flags = _set_precision_flags(trt, config, options.precision, major)
    profile = builder.create_optimization_profile()
    shapes = profile_shapes(inputs, options)
    for name, (smallest, optimal, largest) in shapes.items():
        profile.set_shape(name, smallest, optimal, largest)
    config.add_optimization_profile(profile)
    cache_path = Path(options.timing_cache) if options.timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path.name} "
                           f"(see the TensorRT log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_path is not None:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return {"file": engine_path.name, "source": onnx_path.name, "tensorrt_version": str(trt.__version__),
            "api": "strongly-typed (precision from the graph)" if major >= 11 else "builder flags",
            "builder_flags": flags, "precision": options.precision, "gpu": gpu,
            "profile": {name: [list(s) for s in value] for name, value in shapes.items()},
            "workspace_mb": options.workspace_mb, "options": {k: str(v) if isinstance(v, Path) else v
                                                              for k, v in asdict(options).items()}}
