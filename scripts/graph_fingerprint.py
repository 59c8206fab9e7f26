"""Fingerprint the graph that mrdl-export writes for the seeded tiny model, to show a refactor left it alone.

Exports ``tiny`` (deterministic prompt features, seed 0) to FP32 and FP16 ONNX in a temporary folder with
whichever mrdl is importable, and prints per file the node count and SHA-256 prefixes of the nodes (ops,
inputs, outputs, attributes; the exporter's per-node metadata, which records source file paths, is left
out), the initializers and the graph inputs/outputs. Run it on two checkouts and compare the lines:

    python scripts/graph_fingerprint.py
    pip install --no-deps --target /tmp/old-mrdl <old checkout> && PYTHONPATH=/tmp/old-mrdl python scripts/graph_fingerprint.py
"""

import hashlib
import tempfile
from pathlib import Path

import onnx

from mrdl.checkpoint import save_checkpoint
from mrdl.config import load_config
from mrdl.model import create_model, deterministic_prompt_features
from mrdl_export import export_model


def digest(messages) -> str:
    return hashlib.sha256(b"".join(m.SerializeToString() for m in messages)).hexdigest()[:16]


def fingerprint(path: Path) -> str:
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    graph = model.graph
    return (f"{path.name}: {len(graph.node)} nodes {digest(graph.node)}, initializers {digest(graph.initializer)}, "
            f"inputs/outputs {digest(list(graph.input) + list(graph.output))}, "
            f"opset {[o.version for o in model.opset_import]}")


def main() -> None:
    config = load_config("tiny")
    model = create_model(config, prompt_features=deterministic_prompt_features(config), seed=0).eval()
    with tempfile.TemporaryDirectory(prefix="mrdl-fingerprint-") as folder:
        base = Path(folder)
        export_model(save_checkpoint(base / "tiny.safetensors", model), base / "deploy", max_batch=4,
                     parity_images=2, fp16=True)
        for name in ("model.onnx", "model.fp16.onnx"):
            print(fingerprint(base / "deploy" / name))


if __name__ == "__main__":
    main()
