"""The reference vectors the C++ runtime's ctest suite compares against (tests/cpp/make_test_data.py)
agree with the training preprocessing contract, ``mrdl.data.preprocess``, and its integrity files
are what the C++ artifact checks assume.

The C++ tests check C++ == ``mrdl_runtime``; this closes the loop to what the model was trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import cpp_vectors

def test_preprocess_vectors_match_training_preprocessing(tmp_path):
    from mrdl.data.preprocess import preprocess as training_preprocess

    cases = cpp_vectors.preprocess_vectors(tmp_path, np.random.default_rng(0))
    assert len(cases) == len(cpp_vectors.PREPROCESS_CASES)
    channels = {case["shape"][2] for case in cases}
    assert channels == {1, 3, 4}, "gray, RGB and RGBA inputs are all covered"
    for case in cases:
        image = np.fromfile(tmp_path / case["image"], dtype="<u1").reshape(case["shape"])
        tensor = np.fromfile(tmp_path / case["expected"], dtype="<f4").reshape(3, *case["size"])
        height, width = case["size"]
        if height == width:  # the training helper resizes to squares only
            np.testing.assert_array_equal(tensor, training_preprocess(image, height), err_msg=case["name"])
        assert tensor.min() >= 0.0 and tensor.max() <= 1.0


def test_postprocess_vectors_threshold_and_argmax(tmp_path):
    cases = cpp_vectors.postprocess_vectors(tmp_path, np.random.default_rng(0))
    for case in cases:
        k, (height, width) = case["n_classes"], case["size"]
        probs = np.fromfile(tmp_path / case["expected_probabilities"], dtype="<f4").reshape(k, height, width)
        mask = np.fromfile(tmp_path / case["expected_mask"], dtype="<u1").reshape(height, width)
        expected = (probs[0] > case["threshold"]) if k == 1 else probs.argmax(axis=0)
        np.testing.assert_array_equal(mask, expected.astype(np.uint8), err_msg=case["name"])
        assert 0 < mask.mean() < (1 if k == 1 else k - 1), f"{case['name']}: mask is not one constant value"


def _tiny_onnx(path: Path, embedded: dict) -> None:
    """An Identity graph carrying ``embedded`` as its mrdl.manifest metadata."""
    import onnx
    from onnx import TensorProto, helper

    from mrdl_runtime.manifest import METADATA_KEY

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(embedded)
    onnx.save_model(model, str(path))


def test_integrity_files_for_the_cpp_checks(tmp_path):
    """other_export.onnx differs from model.onnx only in its embedded export_id (same size, so the
    C++ test can show the identity check catches it without the hash); no_manifest.onnx has none."""
    import onnx

    from mrdl_runtime.manifest import METADATA_KEY

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    export_id = "0123456789abcdef0123456789abcdef"
    _tiny_onnx(model_dir / "model.onnx", {"format": "mrdl-deploy/2", "export_id": export_id, "precision": "fp32"})
    files = cpp_vectors.integrity_vectors(tmp_path, model_dir, np.random.default_rng(0))

    probe = (tmp_path / files["hash_probe"]["file"]).read_bytes()
    assert len(probe) % 64 and hashlib.sha256(probe).hexdigest() == files["hash_probe"]["sha256"]
    other = tmp_path / files["other_export"]["file"]
    assert other.stat().st_size == (model_dir / "model.onnx").stat().st_size
    metadata = {p.key: p.value for p in onnx.load(str(other)).metadata_props}
    embedded = json.loads(metadata[METADATA_KEY])
    assert embedded["export_id"] == files["other_export"]["export_id"] != export_id
    assert embedded["precision"] == "fp32"
    stripped = onnx.load(str(tmp_path / files["no_manifest"]["file"]))
    assert METADATA_KEY not in {p.key for p in stripped.metadata_props}


def test_tiff_vectors_decode_by_the_rule(tmp_path):
    """The TIFF cases cover strips and tiles, separate planes, 8 and 16 bits, both byte orders and
    compression, and every expected RGB is what read_image returns (the hand-written files are also
    checked against to_rgb8 of the array written, inside tiff_vectors)."""
    from mrdl_runtime.imaging import read_image

    cases = cpp_vectors.tiff_vectors(tmp_path, np.random.default_rng(0))
    names = {case["name"] for case in cases}
    for fragment in ("tiles", "planar", "rgb16", "gray16", "big_endian", "deflate", "lzw", "palette", "error_"):
        assert any(fragment in name for name in names), fragment
    for case in cases:
        if "error" in case:
            continue
        rgb = np.fromfile(tmp_path / case["expected"], dtype="<u1").reshape(case["height"], case["width"], 3)
        np.testing.assert_array_equal(rgb, read_image(tmp_path / case["file"]), err_msg=case["name"])
    tiled = tmp_path / "rgb16_tiles_deflate_predictor.tif"
    from PIL import Image

    with Image.open(tiled) as image:
        assert image.tag_v2.get(322) == 16 and image.tag_v2.get(317) == 2, "tiled with a predictor as intended"


CPP = Path(__file__).resolve().parents[1] / "runtime" / "cpp"


def _cpp_constant(relative: str, name: str) -> int | str:
    """The value of ``constexpr ... name = value`` in a C++ file: an integer expression
    (``250'000'000``, ``size_t(1) << 20``) or a string literal."""
    import re

    match = re.search(rf"\b{name}\s*=\s*([^;,]+)[;,]", (CPP / relative).read_text())
    assert match, f"{name} not found in runtime/cpp/{relative}"
    text = match.group(1).strip()
    if text.startswith('"'):
        return text.strip('"')
    expression = re.sub(r"\b(?:u?int\d+_t|size_t)\((\d+)\)", r"\1", text.replace("'", ""))
    assert re.fullmatch(r"[0-9 <]+", expression), f"{name} = {text}: not a plain integer expression"
    return eval(expression)  # digits, spaces and << only (checked above)


def test_cpp_limits_are_the_python_runtimes():
    """The limits both runtimes enforce are one number each: the C++ constants equal Python's."""
    from mrdl_runtime import imaging, manifest, options, tiff

    pairs = [
        ("include/mrdl/image.hpp", "kDefaultMaxPixels", imaging.DEFAULT_MAX_PIXELS),
        ("include/mrdl/manifest.hpp", "kMaxManifestBytes", manifest.MAX_MANIFEST_BYTES),
        ("include/mrdl/manifest.hpp", "kMaxManifestDepth", manifest.MAX_JSON_DEPTH),
        ("include/mrdl/manifest.hpp", "kManifestFormat", manifest.FORMAT),
        ("include/mrdl/manifest.hpp", "kMinSourceSide", manifest.MIN_SOURCE_SIDE),
        ("include/mrdl/manifest.hpp", "kMaxSourceSide", manifest.MAX_SOURCE_SIDE),
        ("include/mrdl/manifest.hpp", "kMaxSourceUpscale", manifest.MAX_SOURCE_UPSCALE),
        ("src/imageio/tiff.cpp", "kMaxChunkBytes", tiff.MAX_CHUNK_BYTES),
        ("src/imageio/tiff_bounds.cpp", "kCompressedFactor", tiff.COMPRESSED_FACTOR),
        ("src/imageio/tiff_bounds.cpp", "kCompressedSlack", tiff.COMPRESSED_SLACK),
        ("include/mrdl/threads.hpp", "kMaxThreads", options.MAX_THREADS),
    ]
    for relative, name, python_value in pairs:
        assert _cpp_constant(relative, name) == python_value, f"runtime/cpp/{relative}: {name}"


def _pillow_vertical_first(size: tuple[int, int], out: tuple[int, int]) -> bool:
    """Pillow 13's pass order (libImaging/Resample.c, ImagingResampleInner; runtime/VECTORS.md "Pass order"),
    which the C++ whole-image path follows (mrdl::pillow_pass_order): vertical first when the height shrinks,
    and by more than twice as many pixels as the width does."""
    height_shrink, width_shrink = size[0] - out[0], size[1] - out[1]
    return height_shrink > 0 and height_shrink > 2 * width_shrink


def test_cpp_pass_order_rule_reproduces_the_installed_pillow():
    """The C++ whole-image path agrees with the Python one (Pillow itself) by construction only while the
    installed Pillow picks its pass order by the rule C++ implements: check it where the two orders differ,
    for uint8 RGB images and float32 maps, on both sides of the rule's boundary."""
    import PIL
    from PIL import Image

    from test_runtime_vectors import documented_resize

    if int(PIL.__version__.split(".")[0]) < 13:
        pytest.skip(f"Pillow {PIL.__version__} always resizes horizontal first; the C++ whole-image path follows 13")
    rng = np.random.default_rng(0)
    shapes = [((70, 50), (64, 64)), ((50, 70), (64, 64)), ((120, 40), (64, 64)), ((64, 64), (37, 53)),
              ((64, 64), (41, 29)), ((300, 20), (64, 64))]
    for shrink in (5, 11):  # height shrinking by exactly twice the width's shrink, and by one pixel more
        shapes += [((64 + 2 * shrink, 64 + shrink), (64, 64)), ((65 + 2 * shrink, 64 + shrink), (64, 64))]
    shapes += [(tuple(rng.integers(8, 120, 2)), tuple(rng.integers(8, 120, 2))) for _ in range(40)]
    decisive = 0
    for size, out in shapes:
        size, out = (int(size[0]), int(size[1])), (int(out[0]), int(out[1]))
        vertical_first = _pillow_vertical_first(size, out)
        for image in (rng.integers(0, 256, (*size, 3), dtype=np.uint8), rng.random(size, dtype=np.float32)):
            pillow = np.asarray(Image.fromarray(image).resize((out[1], out[0]), Image.BILINEAR))
            assert np.array_equal(documented_resize(image, out, vertical_first=vertical_first), pillow), (size, out)
            decisive += not np.array_equal(documented_resize(image, out, vertical_first=not vertical_first), pillow)
    assert decisive > len(shapes), "the shapes tell the two orders apart"
