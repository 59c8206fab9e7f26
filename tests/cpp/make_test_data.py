"""Write the data the C++ ctest suite compares against, computed by the Python runtime.

    python tests/cpp/make_test_data.py OUT_DIR

OUT_DIR/index.json describes raw little-endian arrays (``.u8`` uint8, ``.f32`` float32) beside it:

* ``preprocess``: images of many sizes and channel counts with ``mrdl_runtime.imaging.preprocess``'s
  (3, H, W) tensors (cross-checked against ``mrdl.data.preprocess``, the training contract);
* ``postprocess``: model-size probability maps with the original-size maps and masks of
  ``resize_probabilities`` + ``probabilities_to_mask``;
* ``segment``: a ``tiny`` model exported with ``mrdl_export.export_model``, FP32 and INT8 (OUT_DIR/exported;
  OUT_DIR/model is the same with its threshold at the median probability so that masks are not all
  background) and synthetic images (raw and PNG) with the masks and probabilities
  ``mrdl_runtime.Segmenter`` returns;
* ``integrity``: files for the C++ artifact checks: a blob with its ``hashlib`` SHA-256, and copies of
  the exported ``model.onnx`` whose embedded manifest names another export, or that has none.

Run by ctest as a fixture (see runtime/cpp/tests/CMakeLists.txt, which finds it as
MRDL_TEST_DATA_SCRIPT). It needs torch and the training package to export its model, so it lives
with the tests rather than in the torch-free runtime's tree. The folder is rebuilt whenever the
Python sources it depends on (mrdl/, export/, runtime/*.py, this script) or the versions of numpy,
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

# (height, width, channels, model size): up- and downsampling by integer and fractional factors,
# one-pixel-wide strips, gray / RGB / RGBA, and the identity.
PREPROCESS_CASES = [
    (64, 64, 3, (64, 64)), (224, 224, 3, (64, 64)), (100, 37, 3, (64, 64)), (13, 200, 1, (64, 64)),
    (31, 31, 4, (64, 64)), (1, 90, 3, (32, 48)), (250, 1, 1, (48, 32)), (17, 23, 3, (224, 224)),
    (65, 63, 3, (64, 64)), (512, 384, 3, (224, 224)),
]
# (n_classes, model size, original size)
POSTPROCESS_CASES = [
    (1, (64, 64), (64, 64)), (1, (64, 64), (224, 224)), (1, (64, 64), (37, 101)), (3, (32, 32), (70, 45)),
    (2, (48, 48), (48, 200)),
]
SEGMENT_IMAGES = 8
REPO = Path(__file__).resolve().parents[2]


def sources_digest() -> str:
    """SHA-256 over the Python sources and library versions the reference data depends on."""
    import onnxruntime
    import PIL
    import torch

    digest = hashlib.sha256()
    files = [Path(__file__).resolve(), *sorted((REPO / "runtime").glob("*.py"))]
    for package in ("mrdl", "export"):
        files += sorted((REPO / package).rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    for version in (np.__version__, PIL.__version__, onnxruntime.__version__, torch.__version__):
        digest.update(version.encode() + b"\0")
    return digest.hexdigest()


def _write(folder: Path, name: str, array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    suffix = {np.dtype(np.uint8): ".u8", np.dtype(np.float32): ".f32"}[array.dtype]
    (folder / (name + suffix)).write_bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return name + suffix


def _preprocess_vectors(folder: Path, rng: np.random.Generator) -> list[dict]:
    from mrdl.data.preprocess import preprocess as training_preprocess
    from mrdl_runtime.imaging import preprocess

    cases = []
    for i, (h, w, c, size) in enumerate(PREPROCESS_CASES):
        image = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        if i % 2:  # smooth content as well as noise: gradients exercise the rounding differently
            ramp = np.linspace(0, 255, h * w * c).reshape(h, w, c)
            image = np.clip(ramp + rng.normal(0, 8, size=ramp.shape), 0, 255).astype(np.uint8)
        tensor = preprocess(image, size)  # (3, H, W)
        if size[0] == size[1]:
            assert np.array_equal(tensor, training_preprocess(image, size[0])), "runtime and training disagree"
        cases.append({"name": f"{h}x{w}x{c}->{size[0]}x{size[1]}", "shape": [h, w, c], "size": list(size),
                      "scale": 1.0 / 255.0, "image": _write(folder, f"pre_{i:02d}_image", image),
                      "expected": _write(folder, f"pre_{i:02d}_tensor", tensor)})
    return cases


def _postprocess_vectors(folder: Path, rng: np.random.Generator) -> list[dict]:
    from mrdl_runtime.imaging import probabilities_to_mask, resize_probabilities

    cases = []
    for i, (k, model_size, size) in enumerate(POSTPROCESS_CASES):
        logits = rng.normal(0, 2, size=(k, *model_size)).astype(np.float32)
        if k == 1:
            probs = 1 / (1 + np.exp(-logits))
        else:
            probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
        probs = probs.astype(np.float32)  # (K, h, w)
        resized = resize_probabilities(probs, size)  # (K, H, W)
        mask = probabilities_to_mask(resized, threshold=0.5)
        cases.append({"name": f"{k}x{model_size[0]}x{model_size[1]}->{size[0]}x{size[1]}",
                      "n_classes": k, "model_size": list(model_size), "size": list(size), "threshold": 0.5,
                      "probabilities": _write(folder, f"post_{i:02d}_probs", probs),
                      "expected_probabilities": _write(folder, f"post_{i:02d}_resized", resized),
                      "expected_mask": _write(folder, f"post_{i:02d}_mask", mask)})
    return cases


def _segment_vectors(folder: Path) -> dict:
    from mrdl.checkpoint import save_checkpoint
    from mrdl.config import load_config
    from mrdl.data.synthetic import synthetic_sample
    from mrdl.model import create_model, deterministic_prompt_features
    from mrdl_export import export_model
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
    (folder / "model" / "model.json").write_text(json.dumps(manifest, indent=2) + "\n")
    cases = []
    with Segmenter.load(folder / "model", backend="onnxruntime-cpu") as segmenter:
        for i in range(SEGMENT_IMAGES):
            size = (96, 80, 64, 150)[i % 4]  # original sizes around and at the model's 64x64
            image, _, _ = synthetic_sample(i, size=size, seed=0)
            if i == SEGMENT_IMAGES - 1:
                image = image[:, :, 1]  # one grayscale image: replicated to RGB by both runtimes
            prediction = segmenter.predict(image)
            name = f"seg_{i:02d}"
            Image.fromarray(image).save(folder / f"{name}.png")
            Image.fromarray(prediction.mask * np.uint8(255)).save(folder / f"{name}_mask.png")
            shape = list(image.shape) if image.ndim == 3 else [*image.shape, 1]
            cases.append({"name": name, "shape": shape, "image": _write(folder, f"{name}_image", image),
                          "png": f"{name}.png", "mask_png": f"{name}_mask.png",
                          "foreground": int(prediction.mask.sum()),
                          "expected_mask": _write(folder, f"{name}_mask", prediction.mask),
                          "expected_probabilities": _write(folder, f"{name}_probs", prediction.probabilities)})
    return {"model_dir": "model", "threshold": median, "cases": cases}


def _integrity_vectors(folder: Path, model_dir: Path, rng: np.random.Generator) -> dict:
    """A blob hashed by hashlib (1000003 bytes: not a whole number of SHA-256 blocks) and two
    variants of model.onnx: another export's (same size, other export_id) and one without its
    embedded manifest."""
    import onnx

    from mrdl_runtime.manifest import METADATA_KEY

    probe = rng.integers(0, 256, size=1_000_003, dtype=np.uint8).tobytes()
    (folder / "hash_probe.bin").write_bytes(probe)
    model = onnx.load(str(model_dir / "model.onnx"))
    entry = next(prop for prop in model.metadata_props if prop.key == METADATA_KEY)
    embedded = json.loads(entry.value)
    other_id = format(int(embedded["export_id"], 16) ^ 1, "032x")  # another export, same length
    entry.value = entry.value.replace(embedded["export_id"], other_id)
    onnx.save_model(model, str(folder / "other_export.onnx"))
    assert (folder / "other_export.onnx").stat().st_size == (model_dir / "model.onnx").stat().st_size
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save_model(model, str(folder / "no_manifest.onnx"))
    return {"hash_probe": {"file": "hash_probe.bin", "sha256": hashlib.sha256(probe).hexdigest()},
            "other_export": {"file": "other_export.onnx", "export_id": other_id},
            "no_manifest": {"file": "no_manifest.onnx"}}


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
        index = {"sources_digest": digest, "preprocess": _preprocess_vectors(tmp, rng), "postprocess": _postprocess_vectors(tmp, rng),
                 "segment": _segment_vectors(tmp)}
        index["integrity"] = _integrity_vectors(tmp, tmp / index["segment"]["model_dir"], rng)
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}: {len(index['preprocess'])} preprocessing, {len(index['postprocess'])} postprocessing "
          f"and {len(index['segment']['cases'])} end-to-end cases")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_test_data.py OUT_DIR")
    main(sys.argv[1])
