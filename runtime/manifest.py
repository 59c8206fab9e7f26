"""The deploy manifest (``model.json``) read and checked on the runtime side.

docs/deploy-manifest.md is the contract; this module turns the JSON into a typed
:class:`Manifest` and refuses, with a message naming the problem, a directory that is not an
``mrdl-export`` model directory or a manifest that misses what the runtime needs: the text is
bounded (1 MiB, 32 levels of nesting) before it is parsed, every numeric field is checked against
its range, and every artifact is a record (plain file name, size, SHA-256, precision) that
:mod:`mrdl_runtime.integrity` checks the file against when it loads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import MrdlError

FORMAT = "mrdl-deploy/2"
OLDER_FORMATS = ("mrdl-deploy/1",)
MANIFEST_NAME = "model.json"
METADATA_KEY = "mrdl.manifest"  # the ONNX metadata_props key that holds a file's copy of the manifest
PRECISIONS = ("fp32", "fp16", "int8")
# artifact key -> the file name mrdl-export gives it
ARTIFACT_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx", "tensorrt": "model.engine"}
# An artifact entry names a plain file inside the model directory: no separators, no "..", no hidden name.
ARTIFACT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}")
EXPORT_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")
# Bounds checked before the JSON parser runs: mrdl-export writes a few KiB nested a few levels deep.
MAX_MANIFEST_BYTES = 1 << 20
MAX_JSON_DEPTH = 32
MAX_IMAGE_SIDE = 8192
MAX_CLASSES = 255
MAX_BATCH = 4096
# source_size: the training images' typical [height, width] before resizing; each side in
# [max(MIN_SOURCE_SIDE, ceil(model side / MAX_SOURCE_UPSCALE)), MAX_SOURCE_SIDE] (runtime/VECTORS.md)
MIN_SOURCE_SIDE, MAX_SOURCE_SIDE, MAX_SOURCE_UPSCALE = 16, 1 << 16, 4
MAX_SOURCE_MPP = 1000.0  # source_mpp: microns per pixel of the training images, in (0, MAX_SOURCE_MPP]
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')


class ManifestError(MrdlError, ValueError):
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


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` of a manifest text, with its size and nesting bounded before the parser runs.

    One linear pass over the brackets and quotes finds the nesting depth, so a hostile document
    (``[[[[...`` 100000 levels deep) is refused with :class:`ManifestError`, never a RecursionError.
    """
    if len(text) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{where} holds {len(text)} characters; a manifest is at most {MAX_MANIFEST_BYTES} "
                            "(mrdl-export writes a few KiB): is it the right file?")
    depth, in_string, escaped_until = 0, False, -1
    for match in _JSON_STRUCTURE.finditer(text):
        position, char = match.start(), match.group()
        if position < escaped_until:
            continue
        if in_string:
            if char == "\\":
                escaped_until = position + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ManifestError(f"{where} nests JSON more than {MAX_JSON_DEPTH} levels deep; mrdl-export never "
                                    "writes such a manifest: re-export the model")
        elif char in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer longer than Python's digit limit
        raise ManifestError(f"{where} is not valid JSON: {exc}") from exc


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

    def describe(self) -> str:
        """``name dtype [batch, 3, 64, 64]``, as error messages show it."""
        return f"{self.name} {self.dtype} [{', '.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class ArtifactRecord:
    """One ``artifacts`` entry: which file holds artifact ``key``, its size, SHA-256 and precision."""

    key: str
    file: str
    bytes: int
    sha256: str
    precision: str


@dataclass(frozen=True)
class Manifest:
    """What the runtime needs from ``model.json``; ``raw`` keeps the whole document."""

    model_dir: Path
    export_id: str
    name: str
    fusion: str
    n_classes: int
    classes: tuple[str, ...]
    artifacts: dict[str, ArtifactRecord]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch: int
    size: tuple[int, int]  # (height, width) of the model input
    scale: float
    threshold: float
    activation_in_graph: bool
    versions: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    source_size: tuple[int, int] | None = None  # the training scale (docs/tiling.md); None = unknown
    source_mpp: float | None = None  # microns per pixel of the training images (docs/slides.md); None = unknown

    @property
    def image_input(self) -> TensorSpec:
        """The image input (``inputs[0]``)."""
        return self.inputs[0]

    @property
    def text_input(self) -> TensorSpec | None:
        """The text-features input under ``fusion: "addition"``, else None."""
        return next((spec for spec in self.inputs if spec.name == "text_features"), None)

    def artifact(self, key: str) -> ArtifactRecord:
        """The record of artifact ``key`` (``fp32``, ``int8``, ``fp16``, ``tensorrt``); it must be listed."""
        if key not in self.artifacts:
            listed = ", ".join(sorted(self.artifacts)) or "none"
            hint = {"int8": "--int8", "fp16": "--fp16", "tensorrt": "--trt"}.get(key)
            rerun = f"; re-run mrdl-export with {hint}" if hint else ""
            raise ManifestError(f"{self.model_dir} has no '{key}' artifact (it lists: {listed}){rerun}")
        return self.artifacts[key]

    def artifact_path(self, key: str) -> Path:
        """Path of artifact ``key`` inside the model directory; it must exist (verification is
        :func:`mrdl_runtime.integrity.read_artifact`'s job)."""
        path = self.model_dir / self.artifact(key).file
        if not os.path.lexists(path):
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


def _integer(doc: dict[str, Any], key: str, where: str, name: str, low: int, high: int) -> int:
    value = _require(doc, key, int, where)
    if not low <= value <= high:
        raise ManifestError(f"{where} {name} is {value}; expected an integer in [{low}, {high}]")
    return value


def _real(doc: dict[str, Any], section: str, key: str, where: str, *, low: float, high: float,
          expected: str) -> float:
    """``doc[section][key]``: a finite number strictly between ``low`` and ``high``."""
    value = _require(doc[section], key, (int, float), f"{where} {section}")
    try:
        value = float(value)
    except OverflowError:  # an integer of 400 digits
        value = math.inf
    if not (math.isfinite(value) and low < value < high):
        raise ManifestError(f"{where} {section}.{key} is {value!r}; expected {expected}")
    return value


def _tensor_specs(doc: dict[str, Any], key: str, where: str) -> tuple[TensorSpec, ...]:
    specs = []
    for i, item in enumerate(_require(doc, key, list, where)):
        item_where = f"{where} {key}[{i}]"
        if not isinstance(item, dict):
            raise ManifestError(f"{item_where} must be an object with name, shape and dtype")
        shape = tuple(_require(item, "shape", list, item_where))
        if not shape or shape[0] != "batch" or not all(type(d) is int and d > 0 for d in shape[1:]):
            raise ManifestError(f"{item_where} shape must be [\"batch\", positive ints...], got {list(shape)}")
        specs.append(TensorSpec(_require(item, "name", str, item_where), shape, _require(item, "dtype", str, item_where)))
    if not specs:
        raise ManifestError(f"{where} lists no {key}")
    return tuple(specs)


def _artifact_records(doc: dict[str, Any], where: str) -> dict[str, ArtifactRecord]:
    records: dict[str, ArtifactRecord] = {}
    for key, entry in _require(doc, "artifacts", dict, where).items():
        entry_where = f"{where} artifacts.{key}"
        if key not in ARTIFACT_FILES:
            raise ManifestError(f"{where} lists an artifact '{key}'; expected keys among {', '.join(ARTIFACT_FILES)}")
        if not isinstance(entry, dict):
            raise ManifestError(f"{entry_where} must be an object {{file, bytes, sha256, precision}}, "
                                f"got {type(entry).__name__} {entry!r}")
        name = check_artifact_name(_require(entry, "file", str, entry_where), where=entry_where)
        size = _require(entry, "bytes", int, entry_where)
        if size < 0:
            raise ManifestError(f"{entry_where}.bytes is {size}; expected the file's size, an integer >= 0")
        digest = _require(entry, "sha256", str, entry_where)
        if not SHA256_PATTERN.fullmatch(digest):
            raise ManifestError(f"{entry_where}.sha256 is {digest!r}; expected 64 lowercase hex digits")
        precision = _require(entry, "precision", str, entry_where)
        if precision not in PRECISIONS:
            raise ManifestError(f"{entry_where}.precision is {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if key != "tensorrt" and precision != key:
            raise ManifestError(f"{entry_where} says {name} holds {precision}; the '{key}' artifact must hold {key}")
        clash = next((other.key for other in records.values() if other.file == name), None)
        if clash:
            raise ManifestError(f"{where} lists {name} as both the '{clash}' and the '{key}' artifact")
        records[key] = ArtifactRecord(key, name, size, digest, precision)
    return records


def source_size_low(model_size: tuple[int, int] | None) -> tuple[int, int]:
    """The smallest ``source_size`` side per axis: a quarter of the model's side (the tiled path then
    enlarges an image at most 4 times per axis), and never below MIN_SOURCE_SIDE."""
    sides = model_size or (0, 0)
    return tuple(max(MIN_SOURCE_SIDE, -(-side // MAX_SOURCE_UPSCALE)) for side in sides)


def check_source_size(value: object, model_size: tuple[int, int] | None, where: str) -> tuple[int, int]:
    """``value`` as (height, width) when it is two integers in the range of runtime/VECTORS.md
    ("source_size range"), for a model of ``model_size`` (None: the model-independent range only);
    else :class:`ManifestError` naming the range."""
    low = source_size_low(model_size)
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(type(side) is int and bound <= side <= MAX_SOURCE_SIDE for side, bound in zip(value, low))):
        model = f" for a {model_size[0]}x{model_size[1]} model" if model_size else ""
        sides = f"[{low[0]}, {MAX_SOURCE_SIDE}]" if low[0] == low[1] else \
            f"[{low[0]}, {MAX_SOURCE_SIDE}] and [{low[1]}, {MAX_SOURCE_SIDE}]"
        raise ManifestError(f"{where} is {list(value) if isinstance(value, tuple) else value!r}; expected [height, "
                            f"width] of the training images, each side in {sides}{model} (below a quarter of the "
                            "model size the tiled path would enlarge every image more than 4 times per axis)")
    return value[0], value[1]


def _source_size(doc: dict[str, Any], where: str, model_size: tuple[int, int]) -> tuple[int, int] | None:
    """The optional ``source_size`` (:func:`check_source_size`); absent -> None."""
    if "source_size" not in doc:
        return None
    return check_source_size(doc["source_size"], model_size, f"{where} source_size")


def _source_mpp(doc: dict[str, Any], where: str) -> float | None:
    """The optional ``source_mpp``: a number in (0, MAX_SOURCE_MPP] microns per pixel; absent -> None."""
    if "source_mpp" not in doc:
        return None
    value = doc["source_mpp"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= MAX_SOURCE_MPP:
        raise ManifestError(f"{where} source_mpp is {value!r}; expected the training images' microns per pixel, "
                            f"a number in (0, {MAX_SOURCE_MPP:g}] (or no source_mpp at all)")
    return float(value)


def parse_manifest(doc: dict[str, Any], model_dir: str | Path) -> Manifest:
    """Check a manifest document against docs/deploy-manifest.md and return it typed.

    Every numeric field is checked against its range, and every artifact entry is a record whose
    file is a plain name inside ``model_dir``; the files themselves are checked when they load
    (:mod:`mrdl_runtime.integrity`).
    """
    where = str(Path(model_dir) / MANIFEST_NAME)
    if not isinstance(doc, dict):
        raise ManifestError(f"{where} must hold a JSON object, got {type(doc).__name__}")
    found = doc.get("format")
    if found in OLDER_FORMATS:
        raise ManifestError(f"{where} has format {found!r}, written by an older mrdl-export; re-export the model "
                            f"(this runtime reads {FORMAT!r}, which records each artifact's size and SHA-256)")
    if found != FORMAT:
        raise ManifestError(f"{where} has format {found!r}; this runtime reads {FORMAT!r} (written by mrdl-export)")
    export_id = _require(doc, "export_id", str, where)
    if not EXPORT_ID_PATTERN.fullmatch(export_id):
        raise ManifestError(f"{where} export_id is {export_id!r}; expected 32 lowercase hex digits")
    artifacts = _artifact_records(doc, where)
    inputs = _tensor_specs(doc, "inputs", where)
    outputs = _tensor_specs(doc, "outputs", where)
    pre = _require(doc, "preprocessing", dict, where)
    post = _require(doc, "postprocessing", dict, where)
    size = _require(pre, "size", list, f"{where} preprocessing")
    if len(size) != 2 or not all(type(s) is int and 1 <= s <= MAX_IMAGE_SIDE for s in size):
        raise ManifestError(f"{where} preprocessing.size is {size}; expected [height, width], "
                            f"two integers in [1, {MAX_IMAGE_SIDE}]")
    for key, expected in (("resize", "bilinear"), ("channel_order", "RGB"), ("layout", "NCHW")):
        if pre.get(key, expected) != expected:
            raise ManifestError(f"{where} preprocessing.{key} is {pre[key]!r}; this runtime implements {expected!r}")
    scale = _real(doc, "preprocessing", "scale", where, low=0.0, high=math.inf,
                  expected="a finite number > 0 (1/255 maps uint8 pixels to [0, 1])")
    threshold = _real(doc, "postprocessing", "threshold", where, low=0.0, high=1.0,
                      expected="a finite number strictly between 0 and 1 (mrdl-export writes 0.5)")
    n_classes = _integer(doc, "n_classes", where, "n_classes", 1, MAX_CLASSES)
    image = inputs[0]
    if image.name != "image" or image.fixed_shape != (3, *size):
        raise ManifestError(f"{where} inputs[0] must be 'image' of shape [batch, 3, {size[0]}, {size[1]}], "
                            f"got {image.name!r} {list(image.shape)}")
    if outputs[0].fixed_shape != (n_classes, *size):
        raise ManifestError(f"{where} outputs[0] must have shape [batch, {n_classes}, {size[0]}, {size[1]}], "
                            f"got {list(outputs[0].shape)}")
    if not _require(post, "activation_in_graph", bool, f"{where} postprocessing"):
        raise ManifestError(f"{where} says the activation is not in the graph; this runtime expects probabilities")
    classes = doc.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ManifestError(f"{where} classes must be a list of names, got {classes!r}")
    versions = doc.get("versions", {})
    if not isinstance(versions, dict):
        raise ManifestError(f"{where} versions must be an object, got {type(versions).__name__}")
    return Manifest(
        model_dir=Path(model_dir),
        export_id=export_id,
        name=str(doc.get("name", Path(model_dir).name)),
        fusion=_require(doc, "fusion", str, where),
        n_classes=n_classes,
        classes=tuple(classes),
        artifacts=artifacts,
        inputs=inputs,
        outputs=outputs,
        max_batch=_integer(doc, "max_batch", where, "max_batch", 1, MAX_BATCH),
        size=(size[0], size[1]),
        scale=scale,
        threshold=threshold,
        activation_in_graph=True,
        versions=dict(versions),
        raw=doc,
        source_size=_source_size(doc, where, (size[0], size[1])),
        source_mpp=_source_mpp(doc, where),
    )


def load_manifest(model_dir: str | Path) -> Manifest:
    """Read and check ``<model_dir>/model.json`` (at most 1 MiB, nested at most 32 levels)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ManifestError(f"model directory {model_dir} does not exist; create one with mrdl-export")
    path = model_dir / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{model_dir} has no {MANIFEST_NAME}; is it a directory written by mrdl-export?")
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(MAX_MANIFEST_BYTES + 1) if size <= MAX_MANIFEST_BYTES else b""
    if size > MAX_MANIFEST_BYTES or len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path} is {max(size, len(data)) / 2**20:.1f} MiB; a {MANIFEST_NAME} is at most "
                            f"{MAX_MANIFEST_BYTES >> 20} MiB (mrdl-export writes a few KiB): is it the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    return parse_manifest(parse_json(text, str(path)), model_dir)
