"""The deploy manifest (``model.json``) read and checked on the runtime side.

docs/deploy-manifest.md is the contract; this module turns the JSON into a typed
:class:`Manifest` and refuses, with a message naming the problem, a directory that is not an
``mrdl-export`` model directory or a manifest that misses what the runtime needs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "mrdl-deploy/2"
MANIFEST_NAME = "model.json"
PRECISIONS = ("fp32", "fp16", "int8")
# artifact key -> the file name mrdl-export gives it
ARTIFACT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx", "tensorrt": "model.engine"}
# An artifact entry names a plain file inside the model directory: no separators, no "..", no hidden name.
ARTIFACT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")


class ManifestError(ValueError):
    """A model directory or manifest the runtime cannot use."""


class IntegrityError(ManifestError):
    """An artifact whose name, size, hash, precision or graph differs from what ``model.json`` records."""


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Lower-case hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_artifact_name(name: object, *, where: str = MANIFEST_NAME) -> str:
    """``name`` if it is a plain file name inside the model directory, else :class:`ManifestError`."""
    if not isinstance(name, str) or not ARTIFACT_NAME_PATTERN.fullmatch(name) or name in (".", ".."):
        raise ManifestError(f"{where}: artifact file {name!r} must be a plain file name inside the model directory "
                            "(letters, digits, '.', '_', '-'; no path separators, no leading '.')")
    return name


def artifact_record(path: str | Path, precision: str) -> dict[str, Any]:
    """The ``artifacts`` entry of one file: plain name, size in bytes, SHA-256 and the precision it holds."""
    path = Path(path)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"file": check_artifact_name(path.name), "bytes": path.stat().st_size, "sha256": file_sha256(path),
            "precision": precision}


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape (``"batch"`` for the dynamic axis) and dtype."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    @property
    def fixed_shape(self) -> tuple[int, ...]:
        """The shape without its leading dynamic batch axis."""
        return tuple(int(d) for d in self.shape[1:])


@dataclass(frozen=True)
class Manifest:
    """What the runtime needs from ``model.json``; ``raw`` keeps the whole document."""

    model_dir: Path
    name: str
    fusion: str
    n_classes: int
    classes: tuple[str, ...]
    artifacts: dict[str, str]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    size: tuple[int, int]  # (height, width) of the model input
    scale: float
    threshold: float
    activation_in_graph: bool
    versions: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def image_input(self) -> TensorSpec:
        """The image input (``inputs[0]``)."""
        return self.inputs[0]

    @property
    def text_input(self) -> TensorSpec | None:
        """The text-features input under ``fusion: "addition"``, else None."""
        return next((spec for spec in self.inputs if spec.name == "text_features"), None)

    def artifact_path(self, key: str) -> Path:
        """Absolute path of artifact ``key`` (``fp32``, ``int8``, ``fp16``, ``tensorrt``); it must exist."""
        if key not in self.artifacts:
            listed = ", ".join(sorted(self.artifacts)) or "none"
            hint = {"int8": "--int8", "fp16": "--fp16", "tensorrt": "--trt"}.get(key)
            rerun = f"; re-run mrdl-export with {hint}" if hint else ""
            raise ManifestError(f"{self.model_dir} has no '{key}' artifact (it lists: {listed}){rerun}")
        path = self.model_dir / self.artifacts[key]
        if not path.is_file():
            raise ManifestError(f"{MANIFEST_NAME} lists artifact '{key}' as {path.name}, but {path} does not exist")
        return path


def _require(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise ManifestError(f"{where} has no '{key}' field; expected a manifest written by mrdl-export ({FORMAT})")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(f"{where} field '{key}' must be {names}, got {type(value).__name__} {value!r}")
    return value


def _tensor_specs(doc: dict[str, Any], key: str, where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for i, item in enumerate(_require(doc, key, list, where)):
        item_where = f"{where} {key}[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{item_where} must be an object with name, shape and dtype")
        shape = tuple(_require(item, "shape", list, item_where))
        if not shape or shape[0] != "batch" or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ManifestError(f"{item_where} shape must be [\"batch\", positive ints...], got {list(shape)}")
        specs.append(TensorSpec(_require(item, "name", str, item_where), shape, _require(item, "dtype", str, item_where)))
    if not specs:
        raise ManifestError(f"{where} lists no {key}")
    return tuple(specs)


def parse_manifest(doc: dict[str, Any], model_dir: str | Path) -> Manifest:
    """Check a manifest document against docs/deploy-manifest.md and return it typed."""
    where = str(Path(model_dir) / MANIFEST_NAME)
    if not isinstance(doc, dict):
        raise ManifestError(f"{where} must hold a JSON object, got {type(doc).__name__}")
    found = doc.get("format")
    if found != FORMAT:
        raise ManifestError(f"{where} has format {found!r}; this runtime reads {FORMAT!r} (written by mrdl-export)")
    inputs = _tensor_specs(doc, "inputs", where)
    outputs = _tensor_specs(doc, "outputs", where)
    pre = _require(doc, "preprocessing", dict, where)
    post = _require(doc, "postprocessing", dict, where)
    size = _require(pre, "size", list, f"{where} preprocessing")
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ManifestError(f"{where} preprocessing.size must be [height, width], got {size}")
    for key, expected in (("resize", "bilinear"), ("channel_order", "RGB"), ("layout", "NCHW")):
        if pre.get(key, expected) != expected:
            raise ManifestError(f"{where} preprocessing.{key} is {pre[key]!r}; this runtime implements {expected!r}")
    n_classes = _require(doc, "n_classes", int, where)
    image = inputs[0]
    if image.name != "image" or image.fixed_shape != (3, *size):
        raise ManifestError(f"{where} inputs[0] must be 'image' of shape [batch, 3, {size[0]}, {size[1]}], "
                            f"got {image.name!r} {list(image.shape)}")
    if outputs[0].fixed_shape != (n_classes, *size):
        raise ManifestError(f"{where} outputs[0] must have shape [batch, {n_classes}, {size[0]}, {size[1]}], "
                            f"got {list(outputs[0].shape)}")
    if not _require(post, "activation_in_graph", bool, f"{where} postprocessing"):
        raise ManifestError(f"{where} says the activation is not in the graph; this runtime expects probabilities")
    max_batch = _require(doc, "max_batch", int, where)
    if max_batch < 1:
        raise ManifestError(f"{where} max_batch must be >= 1, got {max_batch}")
    return Manifest(
        model_dir=Path(model_dir),
        name=str(doc.get("name", Path(model_dir).name)),
        fusion=_require(doc, "fusion", str, where),
        n_classes=n_classes,
        classes=tuple(doc.get("classes", ())),
        artifacts=dict(_require(doc, "artifacts", dict, where)),
        inputs=inputs,
        outputs=outputs,
        max_batch=max_batch,
        size=(size[0], size[1]),
        scale=float(_require(pre, "scale", (int, float), f"{where} preprocessing")),
        threshold=float(_require(post, "threshold", (int, float), f"{where} postprocessing")),
        activation_in_graph=True,
        versions=dict(doc.get("versions", {})),
        raw=doc,
    )


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and check ``<model_dir>/model.json``."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ManifestError(f"model directory {model_dir} does not exist; create one with mrdl-export")
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{model_dir} has no {MANIFEST_NAME}; is it a directory written by mrdl-export?")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    return parse_manifest(doc, model_dir)
