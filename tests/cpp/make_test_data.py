"""Write the data the C++ ctest suite compares against, computed by the Python runtime.

    python tests/cpp/make_test_data.py OUT_DIR

OUT_DIR/index.json describes raw little-endian arrays (``.u8`` uint8, ``.f32`` float32) beside it:

* ``preprocess``: images of many sizes and channel counts with ``mrdl_runtime.imaging.preprocess``'s
  (3, H, W) tensors (cross-checked against ``mrdl.data.preprocess``, the training contract);
* ``postprocess``: model-size probability maps with the original-size maps and masks of
  ``resize_probabilities`` + ``probabilities_to_mask``;
* ``segment``: a ``tiny`` model exported with ``mrdl_export.export_model``, FP32 and INT8 (OUT_DIR/exported;
  OUT_DIR/model is the same with its threshold at the median probability so that masks are not all
  background) and synthetic images (raw, PNG and 16-bit TIFF) with the masks and probabilities
  ``mrdl_runtime.Segmenter`` returns, and tiled cases (the test model's model.json gets a
  ``source_size``; docs/tiling.md) with ``Segmenter.predict(..., tile=, overlap=, blend=)``'s results;
  where openvino is installed, also the whole images' masks and probabilities from the ``openvino-cpu``
  backend (the C++ OpenVINO backend's reference: the same engine with the same settings);
* ``tiff``: TIFF files (Pillow-written and hand-written: strips, tiles, planes, 8/16-bit, compressed)
  with the RGB ``mrdl_runtime.imaging.read_image`` decodes them to, and files the C++ reader refuses;
* ``hostile_tiff``: crafted TIFFs whose strip / tile numbers lie (tests/cpp/hostile_tiffs.py): each
  decodes to ``expected`` or is refused with ``error`` by both readers (runtime/VECTORS.md, "TIFF byte bounds");
* ``integrity``: files for the C++ artifact checks: a blob with its ``hashlib`` SHA-256, and copies of
  the exported ``model.onnx`` whose embedded manifest names another export, or that has none.

Run by ctest as a fixture (see runtime/cpp/tests/CMakeLists.txt, which finds it as
MRDL_TEST_DATA_SCRIPT). It needs torch and the training package to export its model, so it lives
with the tests rather than in the torch-free runtime's tree. The folder is rebuilt whenever the
Python sources it depends on (mrdl/, export/, runtime/*.py, this script and the vector builders it
shares with the Python tests, tests/helpers/cpp_vectors.py) or the versions of numpy,
Pillow, onnxruntime and torch change, and reused otherwise (exporting takes most of a minute).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the shared helpers package

from helpers.cpp_vectors import (integrity_vectors, postprocess_vectors, preprocess_vectors,  # noqa: E402
                                 tiff_vectors, write_array, write_tiff)

SEGMENT_IMAGES = 8
TILED_SOURCE_SIZE = (128, 128)  # written into the test model's model.json (its size is 64x64)
# (height, width, channels, tile, overlap, blend, expected tiled): auto above 1.5 x 128 per side,
# forced on a small image (resampled below the model size: padding), constant blend, no overlap,
# and auto / off that stay whole.
TILED_CASES = [
    (300, 260, 3, "auto", 0.25, "gaussian", True), (97, 200, 3, True, 0.25, "gaussian", True),
    (333, 301, 1, "auto", 0.5, "constant", True), (250, 250, 3, "auto", 0.0, "gaussian", True),
    (150, 150, 3, "auto", 0.25, "gaussian", False), (300, 260, 3, False, 0.25, "gaussian", False),
]
REPO = Path(__file__).resolve().parents[2]


def sources_digest() -> str:
    """SHA-256 over the Python sources and library versions the reference data depends on."""
    import onnxruntime
    import PIL
    import torch

    digest = hashlib.sha256()
    files = [Path(__file__).resolve(), Path(__file__).with_name("hostile_tiffs.py").resolve(),
             *sorted((REPO / "tests" / "helpers").glob("*.py")), *sorted((REPO / "runtime").glob("*.py"))]
    for package in ("mrdl", "export"):
        files += sorted((REPO / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    for version in (np.__version__, PIL.__version__, onnxruntime.__version__, torch.__version__, _openvino_version()):
        digest.update(version.encode() + b"\0")
    return digest.hexdigest()


def _openvino_version() -> str:
    """openvino's version, "" where it is not installed (then no OpenVINO reference is written)."""
    try:
        import openvino
    except ImportError:
        return ""
    return openvino.__version__


def _openvino_vectors(folder: Path, cases: list[dict], images: list[np.ndarray]) -> None:
    """Add the ``openvino-cpu`` backend's mask and probabilities (FP32) and its INT8 probabilities to each
    whole-image case."""
    from mrdl_runtime import Segmenter

    with Segmenter.load(folder / "model", backend="openvino-cpu") as segmenter:
        for case, image in zip(cases, images):
            prediction = segmenter.predict(image)
            case["openvino_mask"] = write_array(folder, f"{case['name']}_openvino_mask", prediction.mask)
            case["openvino_probabilities"] = write_array(folder, f"{case['name']}_openvino_probs",
                                                         prediction.probabilities)
    # INT8: the rewritten graph (mrdl_runtime.openvino_rewrites), which the C++ backend must rewrite alike
    with Segmenter.load(folder / "model", backend="openvino-cpu", precision="int8") as segmenter:
        for case, image in zip(cases, images):
            case["openvino_int8_probabilities"] = write_array(folder, f"{case['name']}_openvino_int8_probs",
                                                              segmenter.predict(image).probabilities)


def _segment_vectors(folder: Path) -> dict:
    from mrdl.checkpoint import save_checkpoint
    from mrdl.config import load_config
    from mrdl.data.synthetic import synthetic_sample
    from mrdl.model import create_model, deterministic_prompt_features
    from mrdl_export import export_model
    from mrdl_export.manifest import write_deploy_manifest
    from mrdl_runtime import Segmenter

    cfg = load_config("tiny")
    model = create_model(cfg, prompt_features=deterministic_prompt_features(cfg), seed=0)
    ckpt = folder / "tiny.safetensors"
    save_checkpoint(ckpt, model)
    export_model(ckpt, folder / "exported", int8=True, calib_images=8)
    # An untrained model's probabilities sit on one side of 0.5, so its masks would be all
    # background and comparing them would prove little. The test model is the exported one with
    # its manifest threshold moved to the median probability: masks then split roughly in half.
    shutil.copytree(folder / "exported", folder / "model")
    with Segmenter.load(folder / "exported", backend="onnxruntime-cpu") as segmenter:
        image, _, _ = synthetic_sample(0, size=64, seed=0)
        median = float(np.median(segmenter.predict(image).probabilities))
    manifest = json.loads((folder / "model" / "model.json").read_text())
    manifest["postprocessing"]["threshold"] = median
    # Tiling (docs/tiling.md) at half the scale: 128x128 "training images" for the 64x64 model; a
    # max_batch of 4 makes a tiled image's windows run in several batches.
    manifest["source_size"], manifest["max_batch"] = list(TILED_SOURCE_SIZE), 4
    # Written as the export writes it (the copy embedded in each ONNX file too): the runtimes refuse
    # a model.json that differs from the embedded copy.
    manifest["artifacts"] = {key: {"file": entry["file"], "precision": entry["precision"]}
                             for key, entry in manifest["artifacts"].items()}
    write_deploy_manifest(folder / "model", manifest)
    cases, images = [], []
    with Segmenter.load(folder / "model", backend="onnxruntime-cpu") as segmenter:
        for i in range(SEGMENT_IMAGES):
            size = (96, 80, 64, 150)[i % 4]  # original sizes around and at the model's 64x64
            image, _, _ = synthetic_sample(i, size=size, seed=0)
            if i == SEGMENT_IMAGES - 1:
                image = image[:, :, 1]  # one grayscale image: replicated to RGB by both runtimes
            prediction = segmenter.predict(image)
            images.append(image)
            name = f"seg_{i:02d}"
            Image.fromarray(image).save(folder / f"{name}.png")
            Image.fromarray(prediction.mask * np.uint8(255)).save(folder / f"{name}_mask.png")
            shape = list(image.shape) if image.ndim == 3 else [*image.shape, 1]
            # The same pixels as a tiled, deflated 16-bit TIFF (v * 257: the high byte is v again).
            write_tiff(folder / f"{name}.tif", image.reshape(shape).astype(np.uint16) * 257,
                        photometric=2 if shape[2] == 3 else 1, tile=32, deflate=True)
            cases.append({"name": name, "shape": shape, "image": write_array(folder, f"{name}_image", image),
                          "png": f"{name}.png", "tiff": f"{name}.tif", "mask_png": f"{name}_mask.png",
                          "foreground": int(prediction.mask.sum()),
                          "expected_mask": write_array(folder, f"{name}_mask", prediction.mask),
                          "expected_probabilities": write_array(folder, f"{name}_probs", prediction.probabilities)})
        tiled_cases = []
        for i, (height, width, channels, tile, overlap, blend, tiled) in enumerate(TILED_CASES):
            image, _, _ = synthetic_sample(100 + i, size=max(height, width), seed=0)
            image = image[:height, :width] if channels == 3 else np.ascontiguousarray(image[:height, :width, 1])
            prediction = segmenter.predict(image, tile=tile, overlap=overlap, blend=blend)
            assert prediction.tiled is tiled, f"tiled case {i}: expected tiled={tiled}"
            name = f"tiled_{i:02d}"
            shape = [height, width, channels]
            Image.fromarray(image).save(folder / f"{name}.png")
            Image.fromarray(prediction.mask * np.uint8(255)).save(folder / f"{name}_mask.png")
            tiled_cases.append({"name": name, "shape": shape, "tile": tile, "overlap": overlap, "blend": blend,
                                "tiled": tiled, "image": write_array(folder, f"{name}_image", image),
                                "png": f"{name}.png", "mask_png": f"{name}_mask.png",
                                "expected_mask": write_array(folder, f"{name}_mask", prediction.mask),
                                "expected_probabilities": write_array(folder, f"{name}_probs", prediction.probabilities)})
    if _openvino_version():
        _openvino_vectors(folder, cases, images)
    return {"model_dir": "model", "threshold": median, "source_size": list(TILED_SOURCE_SIZE), "cases": cases,
            "tiled_cases": tiled_cases}


def main(out_dir: str) -> None:
    out = Path(out_dir)
    digest = sources_digest()
    try:
        if json.loads((out / "index.json").read_text())["sources_digest"] == digest:
            print(f"{out} is up to date with the Python sources")
            return
    except (OSError, ValueError, KeyError):
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rng = np.random.default_rng(20240807)
        index = {"sources_digest": digest, "preprocess": preprocess_vectors(tmp, rng), "postprocess": postprocess_vectors(tmp, rng),
                 "tiff": tiff_vectors(tmp, rng), "segment": _segment_vectors(tmp)}
        index["integrity"] = integrity_vectors(tmp, tmp / index["segment"]["model_dir"], rng)
        from hostile_tiffs import write_vectors as hostile_tiff_vectors  # beside this script

        index["hostile_tiff"] = hostile_tiff_vectors(tmp)  # runtime/VECTORS.md, "TIFF byte bounds"
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}: {len(index['preprocess'])} preprocessing, {len(index['postprocess'])} postprocessing "
          f"{len(index['tiff'])} TIFF and {len(index['segment']['cases'])} end-to-end cases")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_test_data.py OUT_DIR")
    main(sys.argv[1])
