"""The deploy manifest ``model.json`` (docs/deploy-manifest.md) and its copy in ONNX metadata.

One source of truth for the Python and C++ runtimes: inputs/outputs, preprocessing,
postprocessing, classes, fusion, precision, versions, source checkpoint and parity figures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "mrdl-deploy/1"
METADATA_KEY = "mrdl.manifest"
ARTIFACT_NAMES = {"fp32": "model.onnx", "int8": "model.int8.onnx", "fp16": "model.fp16.onnx",
                  "tensorrt": "model.engine"}


def input_specs(config) -> list[dict[str, Any]]:
    """The graph inputs of a model exported from ``config``: ``image`` [+ ``text_features``]."""
    cfg = config.model
    size = cfg.image_size
    specs = [{"name": "image", "shape": ["batch", cfg.in_channels, size, size], "dtype": "float32"}]
    if cfg.fusion == "addition":
        specs.append({"name": "text_features", "shape": ["batch", cfg.text.context_length, cfg.text.width],
                      "dtype": "float32"})
    return specs


def build_manifest(config, *, checkpoint_path: str | Path, checkpoint_sha256: str, artifacts: dict[str, str],
                   opset: int, max_batch: int, parity: dict[str, Any], precision: str = "fp32",
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest dict for a model exported from ``config`` (an :class:`mrdl.config.MRDLConfig`)."""
    import onnx
    import torch

    from mrdl import __version__
    from mrdl.data.preprocess import SCALE

    cfg = config.model
    size = cfg.image_size
    classes = ["background", "foreground"] if cfg.n_classes == 1 else [f"class_{i}" for i in range(cfg.n_classes)]
    manifest = {
        "format": FORMAT,
        "name": config.name,
        "fusion": cfg.fusion,
        "n_classes": cfg.n_classes,
        "classes": classes,
        "artifacts": dict(artifacts),
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
    manifest.update(extra or {})
    return manifest


def manifest_json(manifest: dict[str, Any]) -> str:
    return json.dumps(manifest, indent=2, sort_keys=False) + "\n"


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> Path:
    """Write ``model.json`` atomically."""
    from mrdl.checkpoint import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(manifest_json(manifest))
    return path


def embed_manifest(onnx_path: str | Path, manifest: dict[str, Any]) -> None:
    """Store ``manifest`` (with its ``precision`` set from the file) in the ONNX metadata_props."""
    import onnx

    from mrdl.checkpoint import atomic_path

    onnx_path = Path(onnx_path)
    model = onnx.load(str(onnx_path))
    precision = next((k for k, v in manifest["artifacts"].items() if v == onnx_path.name), manifest["precision"])
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key = METADATA_KEY
    entry.value = json.dumps({**manifest, "precision": precision}, sort_keys=False)
    with atomic_path(onnx_path) as tmp:
        onnx.save_model(model, str(tmp), save_as_external_data=False)


def read_embedded_manifest(onnx_path: str | Path) -> dict[str, Any]:
    """The manifest stored in an ONNX file's metadata_props."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise KeyError(f"{onnx_path} has no {METADATA_KEY!r} metadata")
