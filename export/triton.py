"""A Triton Inference Server model repository from a deploy directory (``mrdl triton-repo``, ``mrdl-export --triton``).

Each artifact in ``model.json`` becomes one model, named ``<prefix>_<key>`` (``mrdl_fp32``,
``mrdl_int8``, ``mrdl_fp16``, ``mrdl_tensorrt``), in the standard layout Triton loads::

    REPO/
      mrdl_fp32/config.pbtxt        backend "onnxruntime"
      mrdl_fp32/1/model.onnx
      mrdl_tensorrt/config.pbtxt    platform "tensorrt_plan"
      mrdl_tensorrt/1/model.plan

Beside them, the front model ``<prefix>`` (``mrdl``) is what clients call: Triton's Python backend
running :mod:`mrdl_runtime.triton_model` (``pip install mrdl`` in the backend's Python), with a
verified copy of the model directory in its version folder::

      mrdl/config.pbtxt             backend "python", version_policy latest 1, export id and SHA-256
      mrdl/1/model.py               from mrdl_runtime.triton_model import TritonPythonModel
      mrdl/1/model/model.json, model.onnx, ...

It takes the raw ``image`` UINT8 ``[b, H, W, 3]`` and the tiling parameters (``tile``,
``overlap``, ``blend``) and returns ``mask`` UINT8 ``[b, H, W]`` at the original size (and
``probabilities``, ``tiled``): preprocessing, tiling, resize-back and threshold run on the server,
exactly as ``mrdl predict`` / ``mrdl serve`` (the same model). It runs the ONNX model in-process with
ONNX Runtime, so a server with only the Python backend (the one NVIDIA's PyTriton wheel ships)
serves it: ``tritonserver --model-repository REPO --model-control-mode explicit --load-model mrdl``.
Image-only models (fusion "distribution") get one; others do not (they need text features).

``config.pbtxt`` takes its inputs, outputs, dims and ``max_batch_size`` from the manifest, enables
the dynamic batcher with preferred batch sizes, and places instances on CPU (ONNX models by
default) or GPU (engines, and ONNX with ``kind="gpu"``). Its ``parameters`` record the export id,
artifact file, SHA-256 and precision the model came from. These models take what the ONNX graph
takes: the preprocessed ``image`` FP32 ``[3, H, W]`` (``mrdl_runtime.preprocess``) and return
``probabilities`` at the model's size; ``mrdl serve`` is the server that takes raw images.

Every artifact is verified against ``model.json`` (size, SHA-256) before it is copied. The
repository is written into a hidden temporary folder beside ``out`` and renamed onto it when
complete; ``force`` replaces an existing repository only when it holds nothing but model folders
(each with a ``config.pbtxt``).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from mrdl_runtime.errors import MrdlError
from mrdl_runtime.front_model import NAME_PATTERN, NAME_RULE
from mrdl_runtime.manifest import Manifest, load_manifest

DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
          "uint8": "TYPE_UINT8", "int8": "TYPE_INT8", "bool": "TYPE_BOOL"}
FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
KINDS = ("auto", "cpu", "gpu")


class TritonRepoError(MrdlError, RuntimeError):
    """A repository that cannot be written: bad options, an occupied ``out``, a failed artifact check."""


@dataclass(frozen=True)
class TritonRepoOptions:
    """How :func:`write_repository` lays the models out."""

    prefix: str = "mrdl"
    precisions: tuple[str, ...] | None = None  # artifact keys to include; None: every artifact listed
    max_batch: int | None = None  # default: the manifest's max_batch
    max_queue_delay_us: int = 2000
    instances: int = 1
    kind: str = "auto"  # instance placement: auto (engines on GPU, ONNX on CPU), cpu, gpu
    force: bool = False
    front: bool = True  # also write the front model <prefix> (raw images in, masks out)
    front_precision: str = "fp32"  # the artifact the front model runs
    max_queue: int = 2  # the front model's queue (mrdl serve's default); one more request is refused with UNAVAILABLE


def _preferred(max_batch: int) -> list[int]:
    """Preferred dynamic-batch sizes: the powers of two up to ``max_batch``, and ``max_batch`` itself (at most 4)."""
    sizes = sorted({2 ** i for i in range(max_batch.bit_length()) if 2 ** i <= max_batch} | {max_batch})
    return [s for s in sizes if s > 1][-4:] or [1]


def _tensor(spec, dims: tuple[int, ...]) -> str:
    dtype = DTYPES.get(spec.dtype)
    if dtype is None:
        raise TritonRepoError(f"tensor {spec.name} has dtype {spec.dtype}; no Triton type is known for it")
    return f'  {{\n    name: "{spec.name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def config_text(manifest: Manifest, key: str, name: str, options: TritonRepoOptions) -> str:
    """The ``config.pbtxt`` (Triton's ModelConfig protobuf, text format) of artifact ``key``."""
    record = manifest.artifact(key)
    max_batch = options.max_batch or manifest.max_batch
    engine = key == "tensorrt"
    kind = options.kind if options.kind != "auto" else ("gpu" if engine else "cpu")
    backend = 'platform: "tensorrt_plan"\nbackend: "tensorrt"' if engine else 'backend: "onnxruntime"'
    inputs = ",\n".join(_tensor(spec, spec.fixed_shape) for spec in manifest.inputs)
    outputs = ",\n".join(_tensor(spec, spec.fixed_shape) for spec in manifest.outputs)
    preferred = ", ".join(map(str, _preferred(max_batch)))
    parameters = {"mrdl.export_id": manifest.export_id, "mrdl.artifact": record.file, "mrdl.sha256": record.sha256,
                  "mrdl.precision": record.precision, "mrdl.threshold": repr(manifest.threshold),
                  "mrdl.scale": repr(manifest.scale), "mrdl.size": f"{manifest.size[0]}x{manifest.size[1]}"}
    parameter_text = "\n".join(f'parameters {{\n  key: "{k}"\n  value {{ string_value: "{v}" }}\n}}'
                               for k, v in parameters.items())
    return (f'# Written by mrdl triton-repo from {manifest.model_dir.name}/{record.file} '
            f'(export {manifest.export_id}).\n'
            f'# Input: the preprocessed image (mrdl_runtime.preprocess); output: probabilities at the model size.\n'
            f'name: "{name}"\n{backend}\nmax_batch_size: {max_batch}\n'
            f'input [\n{inputs}\n]\noutput [\n{outputs}\n]\n'
            f'dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]\n'
            f'  max_queue_delay_microseconds: {options.max_queue_delay_us}\n}}\n'
            f'instance_group [\n  {{\n    count: {options.instances}\n    kind: KIND_{kind.upper()}\n  }}\n]\n'
            f'{parameter_text}\n')


def _check_options(manifest: Manifest, options: TritonRepoOptions) -> list[str]:
    if not isinstance(options.prefix, str) or not NAME_PATTERN.fullmatch(options.prefix):
        raise TritonRepoError(f"model name prefix {options.prefix!r}: {NAME_RULE}")
    if options.kind not in KINDS:
        raise TritonRepoError(f"kind must be one of {', '.join(KINDS)}, got {options.kind!r}")
    if options.instances < 1 or options.max_queue_delay_us < 0:
        raise TritonRepoError(f"instances must be >= 1 and max_queue_delay_us >= 0; got {options.instances}, "
                              f"{options.max_queue_delay_us}")
    if options.max_batch is not None and not 1 <= options.max_batch <= manifest.max_batch:
        raise TritonRepoError(f"max_batch must be in [1, {manifest.max_batch}] (the model directory's max_batch; "
                              f"a TensorRT engine's profile ends there); got {options.max_batch}")
    keys = list(options.precisions) if options.precisions else sorted(manifest.artifacts)
    for key in keys:
        manifest.artifact(key)  # ManifestError naming what the directory lists
    return keys


def _write_front_model(manifest: Manifest, keys: list[str], folder: Path, options: TritonRepoOptions) -> None:
    """The front model (:mod:`mrdl_runtime.triton_model`) with a verified copy of the model directory in ``1/model``."""
    from mrdl_runtime.integrity import read_artifact
    from mrdl_runtime.options import LoadOptions
    from mrdl_runtime.serving import ServeOptions
    from mrdl_runtime.front_model import write_front_model

    if options.front_precision not in keys:
        raise TritonRepoError(f"the front model runs artifact {options.front_precision!r}, which is not among "
                              f"those written ({', '.join(keys)}); add --precision {options.front_precision}")
    serve = ServeOptions(model_name=options.prefix, max_batch=options.max_batch,
                         max_queue_delay_us=options.max_queue_delay_us, instances=options.instances,
                         max_queue=options.max_queue, load=LoadOptions(precision=options.front_precision))
    version = write_front_model(folder, options.prefix, manifest, serve, "model")
    copy = version / "model"
    copy.mkdir()
    for key in keys:
        (copy / manifest.artifact(key).file).write_bytes(read_artifact(manifest, key))
    shutil.copyfile(Path(manifest.model_dir) / "model.json", copy / "model.json")


def _is_repository(folder: Path) -> bool:
    """True when ``folder`` holds nothing but model folders, each with a config.pbtxt (what this writer makes)."""
    entries = list(folder.iterdir())
    return all(entry.is_dir() and not entry.is_symlink() and (entry / "config.pbtxt").is_file() for entry in entries)


def check_out(out: Path, *, force: bool, model_dir: Path) -> None:
    """Refuse an ``out`` that overlaps the model directory or holds something else than a repository."""
    resolved, source = out.resolve(), model_dir.resolve()
    if resolved == source or resolved in source.parents or source in resolved.parents:
        raise TritonRepoError(f"--out {out} overlaps the model directory {model_dir}; write the repository elsewhere")
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise TritonRepoError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise TritonRepoError(f"--out {out} is not empty; add --force to replace a repository written before")
        if not _is_repository(out):
            raise TritonRepoError(f"--out {out} holds files other than Triton model folders; refusing to replace it "
                                  "even with --force")


def write_repository(model_dir: str | Path, out: str | Path,
                     options: TritonRepoOptions | None = None) -> dict[str, Path]:
    """Write the Triton model repository of ``model_dir`` into ``out``; returns {model name: its folder}.

    Raises :class:`TritonRepoError` (bad options, an occupied ``out``), ``ManifestError`` (no such
    artifact) and ``IntegrityError`` (an artifact that does not match ``model.json``).
    """
    from mrdl_runtime.integrity import read_artifact

    options = options or TritonRepoOptions()
    model_dir, out = Path(model_dir), Path(os.path.abspath(out))
    manifest = load_manifest(model_dir)
    keys = _check_options(manifest, options)
    check_out(out, force=options.force, model_dir=model_dir)
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    written = {}
    try:
        partial.mkdir(parents=True)
        for key in keys:
            name = f"{options.prefix}_{key}"
            folder = partial / name
            (folder / "1").mkdir(parents=True)
            data = read_artifact(manifest, key)  # verified: size and SHA-256 against model.json
            (folder / "1" / FILES["tensorrt" if key == "tensorrt" else "onnx"]).write_bytes(data)
            (folder / "config.pbtxt").write_text(config_text(manifest, key, name, options))
            written[name] = out / name
        if options.front and manifest.text_input is None:
            _write_front_model(manifest, keys, partial / options.prefix, options)
            written[options.prefix] = out / options.prefix
        if out.exists():
            out.rename(old)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if old.exists() and not out.exists():
            old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return written
