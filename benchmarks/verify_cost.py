"""What verifying a model file costs when ``mrdl_runtime`` loads it (issue 10: say what it costs).

    python benchmarks/verify_cost.py                    # a 105 MiB model.onnx, 5 loads each way
    python benchmarks/verify_cost.py --mib 500 --repeats 3

Writes a model directory whose ``model.onnx`` holds one ``--mib`` MiB float32 initializer (the
graph maps ``image`` [batch, 3, 64, 64] to ``probabilities`` [batch, 1, 64, 64] and uses the
initializer, so ONNX Runtime parses all of it) with a ``mrdl-deploy/2`` manifest, then times
``Segmenter.load`` with the SHA-256 check (the default) and with ``verify=False`` (size, embedded
identity and graph only), and the hash of the bytes alone. Prints the median of each; the file is
in the page cache after the first load, so the figures are the CPU cost, not the disk's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np


def write_model_dir(model_dir: Path, mib: int) -> Path:
    """A valid mrdl-deploy/2 directory whose model.onnx carries ``mib`` MiB of weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from mrdl_runtime.manifest import ARTIFACT_FILES, FORMAT, MANIFEST_NAME, METADATA_KEY, artifact_record

    weights = np.random.default_rng(0).standard_normal((mib << 20) // 4).astype(np.float32)
    nodes = [helper.make_node("ReduceMean", ["weights"], ["weight_mean"], keepdims=0),
             helper.make_node("ReduceMean", ["image"], ["gray"], axes=[1], keepdims=1),
             helper.make_node("Add", ["gray", "weight_mean"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["probabilities"])]
    graph = helper.make_graph(
        nodes, "verify_cost",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 64, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1, 64, 64])],
        [numpy_helper.from_array(weights, "weights")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    manifest = {
        "format": FORMAT, "export_id": uuid.uuid4().hex, "name": "verify-cost", "fusion": "distribution",
        "n_classes": 1, "classes": ["background", "foreground"],
        "inputs": [{"name": "image", "shape": ["batch", 3, 64, 64], "dtype": "float32"}],
        "outputs": [{"name": "probabilities", "shape": ["batch", 1, 64, 64], "dtype": "float32"}],
        "max_batch": 4,
        "preprocessing": {"size": [64, 64], "resize": "bilinear", "channel_order": "RGB", "layout": "NCHW",
                          "scale": 1 / 255, "grayscale": "replicate"},
        "postprocessing": {"activation": "sigmoid", "activation_in_graph": True, "threshold": 0.5},
        "precision": "fp32",
    }
    path = model_dir / ARTIFACT_FILES["fp32"]
    embedded = {**manifest, "artifacts": {"fp32": {"file": path.name, "precision": "fp32"}}}
    helper.set_model_props(model, {METADATA_KEY: json.dumps(embedded)})
    model_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    manifest["artifacts"] = {"fp32": artifact_record(path, "fp32")}
    (model_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return model_dir


def median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=105, help="size of the model's weights in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="loads timed per variant (the median is printed)")
    args = parser.parse_args()

    import logging

    from mrdl_runtime import Segmenter
    from mrdl_runtime.manifest import ARTIFACT_FILES

    logging.getLogger("mrdl_runtime").setLevel(logging.ERROR)  # verify=False warns on every load

    def load(verify: bool) -> None:
        Segmenter.load(model_dir, backend="onnxruntime-cpu", verify=verify).close()

    with tempfile.TemporaryDirectory(prefix="mrdl-verify-cost-") as tmp:
        model_dir = write_model_dir(Path(tmp) / "deploy", args.mib)
        data = (model_dir / ARTIFACT_FILES["fp32"]).read_bytes()
        size = len(data)
        load(True)  # warm the page cache and onnxruntime
        hashed = median_seconds(lambda: load(True), args.repeats)
        unhashed = median_seconds(lambda: load(False), args.repeats)
        digest = median_seconds(lambda: hashlib.sha256(data).hexdigest(), args.repeats)
    print(f"model.onnx {size / 2**20:.1f} MiB, median of {args.repeats} loads (onnxruntime-cpu):")
    print(f"  Segmenter.load(verify=True)   {hashed * 1000:8.1f} ms")
    print(f"  Segmenter.load(verify=False)  {unhashed * 1000:8.1f} ms")
    print(f"  SHA-256 of the bytes alone    {digest * 1000:8.1f} ms ({size / 2**20 / digest:.0f} MiB/s)")
    print(f"  verification adds             {(hashed - unhashed) * 1000:8.1f} ms "
          f"({100 * (hashed - unhashed) / unhashed:+.0f} % of the load)")


if __name__ == "__main__":
    main()
