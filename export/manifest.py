"""The deploy manifest ``model.json`` (docs/deploy-manifest.md, format ``mrdl-deploy/2``) and its
copy in ONNX metadata.

One source of truth for the Python and C++ runtimes: inputs/outputs, preprocessing,
postprocessing, classes, fusion, precision, versions, source checkpoint, parity figures, and the
artifacts (plain file name, size, SHA-256, precision) under one ``export_id``. The schema's
constants and the artifact records come from :mod:`mrdl_runtime.manifest`, which reads it, and
every ``model.json`` is checked by that reader (:func:`mrdl_runtime.manifest.parse_manifest`)
before it is written, so the export never writes a manifest the runtimes refuse.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any, Callable

from mrdl_runtime.atomic import atomic_path
from mrdl_runtime.manifest import (FORMAT, MANIFEST_NAME, MAX_SOURCE_MPP, MAX_SOURCE_SIDE, METADATA_KEY, ManifestError, artifact_record,
                                   check_source_size, parse_manifest)

from .errors import ExportError


def input_specs(config) -> list[dict[str, Any]]:
    """The graph inputs of a model exported from ``config``: ``image`` [+ ``text_features``]."""
    cfg = config.model
    size = cfg.image_size
    specs = [{"name": "image", "shape": ["batch", cfg.in_channels, size, size], "dtype": "float32"}]
    if cfg.fusion == "addition":
        specs.append({"name": "text_features", "shape": ["batch", cfg.text.context_length, cfg.text.width],
                      "dtype": "float32"})
    return specs


def parse_source_size(value: Any, *, where: str = "--source-size") -> tuple[int, int]:
    """``"HxW"`` (``--source-size``) or ``[H, W]`` (checkpoint provenance) -> (H, W), each in
    [1, MAX_SOURCE_SIDE]; else :class:`ExportError` naming the expected form."""
    match = re.fullmatch(r"\s*(\d{1,9})\s*[xX]\s*(\d{1,9})\s*", value) if isinstance(value, str) else None
    pair = (int(match[1]), int(match[2])) if match else tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(pair) != 2 or not all(type(side) is int and 1 <= side <= MAX_SOURCE_SIDE for side in pair):
        raise ExportError(f"{where} is {value!r}; expected the training images' size as HxW (e.g. 1000x1000), "
                          f"two integers in [1, {MAX_SOURCE_SIDE}]")
    return pair


def recorded_provenance(checkpoint_path: str | Path, key: str) -> Any:
    """``key`` of the provenance ``mrdl train`` recorded in the checkpoint's header (None when absent);
    reads the safetensors header only, no tensors."""
    from safetensors import safe_open

    with safe_open(str(checkpoint_path), framework="pt") as handle:
        provenance = json.loads((handle.metadata() or {}).get("mrdl.provenance", "{}"))
    return provenance.get(key) if isinstance(provenance, dict) else None


def option_or_recorded(option: str | None, checkpoint_path: str | Path, key: str, parse: Callable[..., Any]) -> Any:
    """``parse(option)`` when the export option ``--<key>`` is given, else ``parse`` of the checkpoint
    provenance's ``key`` (naming where it came from), else None."""
    if option is not None:
        return parse(option)
    recorded = recorded_provenance(checkpoint_path, key)
    if recorded is None:
        return None
    flag = "--" + key.replace("_", "-")
    return parse(recorded, where=f"{checkpoint_path} provenance {key} (override with {flag})")


def source_size_for(option: str | None, checkpoint_path: str | Path) -> tuple[int, int] | None:
    """The manifest's ``source_size``: ``--source-size`` when given, else the checkpoint provenance's
    ``source_size`` (recorded by ``mrdl train``), else None (tiling is then never automatic)."""
    return option_or_recorded(option, checkpoint_path, "source_size", parse_source_size)


def parse_source_mpp(value: Any, *, where: str = "--source-mpp") -> float:
    """``"0.25"`` (``--source-mpp``) or 0.25 (checkpoint provenance) -> microns per pixel in
    (0, MAX_SOURCE_MPP]; else :class:`ExportError` naming the expected form."""
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not 0.0 < number <= MAX_SOURCE_MPP:
        raise ExportError(f"{where} is {value!r}; expected the training images' resolution in microns per pixel, "
                          f"a number in (0, {MAX_SOURCE_MPP:g}] (MoNuSeg at 40x: 0.25)")
    return number


def source_mpp_for(option: str | None, checkpoint_path: str | Path) -> float | None:
    """The manifest's ``source_mpp``: ``--source-mpp`` when given, else the checkpoint provenance's
    ``source_mpp`` (recorded by ``mrdl train``), else None (whole slides are then refused)."""
    return option_or_recorded(option, checkpoint_path, "source_mpp", parse_source_mpp)


def build_manifest(config, *, checkpoint_path: str | Path, checkpoint_sha256: str,
                   artifacts: dict[str, dict[str, str]], opset: int, max_batch: int, parity: dict[str, Any],
                   precision: str = "fp32", extra: dict[str, Any] | None = None,
                   source_size: tuple[int, int] | None = None, source_mpp: float | None = None) -> dict[str, Any]:
    """The manifest dict for a model exported from ``config`` (an :class:`mrdl.config.MRDLConfig`).

    ``source_size``: the training images' (H, W) before resizing (docs/tiling.md), written when known;
    ``source_mpp``: their microns per pixel (docs/slides.md), written when known.

    ``artifacts``: key -> ``{"file", "precision"}``; :func:`write_deploy_manifest` adds sizes and
    hashes once the files are final. A fresh ``export_id`` ties the files of this export together.
    """
    import onnx
    import torch

    from mrdl import __version__
    from mrdl.data.preprocess import SCALE

    cfg = config.model
    size = cfg.image_size
    classes = ["background", "foreground"] if cfg.n_classes == 1 else [f"class_{i}" for i in range(cfg.n_classes)]
    manifest = {
        "format": FORMAT,
        "export_id": uuid.uuid4().hex,
        "name": config.name,
        "fusion": cfg.fusion,
        "n_classes": cfg.n_classes,
        "classes": classes,
        "artifacts": {key: dict(entry) for key, entry in artifacts.items()},
        "inputs": input_specs(config),
        "outputs": [{"name": "probabilities", "shape": ["batch", cfg.n_classes, size, size], "dtype": "float32"}],
        "max_batch": max_batch,
        "preprocessing": {"size": [size, size], "resize": "bilinear", "channel_order": "RGB", "layout": "NCHW",
                          "scale": SCALE, "grayscale": "replicate"},
        "postprocessing": {"activation": "sigmoid" if cfg.n_classes == 1 else "softmax",
                           "activation_in_graph": True, "threshold": 0.5, "resize_to_original": "bilinear"},
        "precision": precision,
        "versions": {"mrdl": __version__, "torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
                     "opset": opset},
        "source_checkpoint": {"path": str(checkpoint_path), "sha256": checkpoint_sha256},
        "parity": parity,
    }
    if source_size is not None:  # the model-relative range (runtime/VECTORS.md), named before anything is written
        try:
            manifest["source_size"] = list(check_source_size([int(side) for side in source_size], (size, size),
                                                             "the training images' size (--source-size or provenance)"))
        except ManifestError as exc:
            raise ExportError(str(exc)) from None
    if source_mpp is not None:
        manifest["source_mpp"] = float(source_mpp)
    manifest.update(extra or {})
    return manifest


def manifest_json(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``model.json`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(manifest_json(manifest))
    return path


def embed_manifest(onnx_path: str | Path, manifest: dict[str, Any], *, precision: str) -> None:
    """Store ``manifest`` in the ONNX metadata_props, with the ``precision`` this file holds.

    The embedded ``artifacts`` entries carry only ``file`` and ``precision``: a file cannot hold
    its own hash. ``export_id`` is the same as in ``model.json``.
    """
    import onnx

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    embedded = {**manifest, "precision": precision,
                "artifacts": {key: {"file": entry["file"], "precision": entry["precision"]}
                              for key, entry in manifest["artifacts"].items()}}
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps(embedded, sort_keys=False)
    with atomic_path(onnx_path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)


def write_deploy_manifest(folder: str | Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Finish the files of ``folder`` and write its ``model.json``; return the manifest written.

    Order matters: the manifest is embedded into each ONNX file first, then every artifact is
    measured and hashed as it will be published, then ``model.json`` records those figures once
    the runtime's reader accepts them (:class:`ExportError` otherwise: a bug in the export).
    """
    folder = Path(folder)
    for entry in manifest["artifacts"].values():
        if entry["file"].endswith(".onnx"):
            embed_manifest(folder / entry["file"], manifest, precision=entry["precision"])
    final = {**manifest, "artifacts": {key: artifact_record(folder / entry["file"], entry["precision"])
                                       for key, entry in manifest["artifacts"].items()}}
    try:
        parse_manifest(final, folder)
    except ManifestError as exc:
        raise ExportError(f"mrdl_runtime refuses the manifest this export built ({exc}); nothing was written. "
                          "This is a bug in mrdl-export: please report it with the command line") from exc
    write_manifest(folder / MANIFEST_NAME, final)
    return final


def read_embedded_manifest(onnx_path: str | Path) -> dict[str, Any]:
    """The manifest stored in an ONNX file's metadata_props."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise KeyError(f"{onnx_path} has no {METADATA_KEY!r} metadata")
