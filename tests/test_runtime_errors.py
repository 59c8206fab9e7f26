"""mrdl_runtime refuses bad input clearly: images, manifests, backends, and runners used out of order."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def edited_model_dir(model_dir, tmp_path):
    """A copy of the model directory whose manifest a test may rewrite: call it with a function of the doc."""
    def edit(change) -> Path:
        copy = tmp_path / "deploy"
        shutil.copytree(model_dir, copy)
        doc = json.loads((copy / "model.json").read_text())
        change(doc)
        (copy / "model.json").write_text(json.dumps(doc))
        return copy
    return edit


@pytest.mark.parametrize(("image", "message"), [
    (np.full((20, 30, 3), np.nan, np.float32), "float image holds NaN or infinite values"),
    (np.full((20, 30, 3), -1, np.int64), "integer image values from -1 to -1; expected 8-bit"),
    (np.zeros((3, 20, 30), np.uint8), "looks channels-first"),
    (np.zeros((20, 30, 5), np.uint8), "with 5 channels"),
    (np.zeros((2, 20, 30, 3), np.uint8), "4-d array"),
    (np.zeros((0, 30, 3), np.uint8), "empty image"),
    ([[0, 1], [2, 3]], "got list"),
])
def test_bad_images_name_what_was_expected(image, message):
    from mrdl_runtime.imaging import ImageInputError, check_image

    with pytest.raises(ImageInputError) as info:
        check_image(image)
    assert message in str(info.value)


def test_bad_channel_order():
    from mrdl_runtime.imaging import ImageInputError, check_image

    with pytest.raises(ImageInputError, match="channel_order must be one of"):
        check_image(np.zeros((4, 4, 3), np.uint8), channel_order="RGBA")


def test_segmenter_rejects_bad_image_and_text(model_dir):
    from mrdl_runtime import ImageInputError, Segmenter

    with Segmenter.load(model_dir) as segmenter:
        with pytest.raises(ImageInputError, match="float image values up to 300"):
            segmenter.predict(np.full((10, 10, 3), 300.0))
        with pytest.raises(ValueError, match="takes no text features"):
            segmenter.predict(np.zeros((10, 10, 3), np.uint8), text_features=np.zeros((77, 32), np.float32))
        with pytest.raises(ImageInputError, match=r"float32 numpy array, a batch of shape \(B, 3, 64, 64\)"):
            segmenter.infer(np.zeros((1, 3, 32, 32), np.float32))


def test_missing_directory_and_manifest(tmp_path):
    from mrdl_runtime import ManifestError, Segmenter

    with pytest.raises(ManifestError, match="does not exist; create one with mrdl-export"):
        Segmenter.load(tmp_path / "nowhere")
    with pytest.raises(ManifestError, match="has no model.json"):
        Segmenter.load(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        Segmenter.load(tmp_path)


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(format="mrdl-deploy/9"), "has format 'mrdl-deploy/9'; this runtime reads 'mrdl-deploy/2'"),
    (lambda d: d.pop("preprocessing"), "has no 'preprocessing' field"),
    (lambda d: d.update(max_batch="4"), "field 'max_batch' must be int, got str"),
    (lambda d: d.update(max_batch=0), r"max_batch is 0; expected an integer in \[1, 4096\]"),
    (lambda d: d["inputs"][0].update(shape=[1, 3, 64, 64]), r'shape must be \["batch", positive ints...\]'),
    (lambda d: d["inputs"][0].update(shape=["batch", 3, 32, 32]), "inputs\\[0\\] must be 'image' of shape"),
    (lambda d: d["preprocessing"].update(channel_order="BGR"), "channel_order is 'BGR'; this runtime implements 'RGB'"),
    (lambda d: d["postprocessing"].update(activation_in_graph=False), "activation is not in the graph"),
])
def test_bad_manifests(edited_model_dir, change, message):
    from mrdl_runtime import ManifestError, Segmenter

    with pytest.raises(ManifestError, match=message):
        Segmenter.load(edited_model_dir(change))


def test_manifest_that_does_not_match_the_model(edited_model_dir):
    from mrdl_runtime import IntegrityError, Segmenter

    text = {"name": "text_features", "shape": ["batch", 77, 32], "dtype": "float32"}
    with pytest.raises(IntegrityError, match=r"model.onnx: the graph's inputs are image float32 \[batch, 3, 64, 64\], "
                                             r"but model.json lists image float32 \[batch, 3, 64, 64\]; "
                                             r"text_features float32 \[batch, 77, 32\]"):
        Segmenter.load(edited_model_dir(lambda d: d["inputs"].append(text)))


def test_addition_models_check_their_text_features(model_dir):
    from mrdl_runtime import Segmenter
    from mrdl_runtime.manifest import TensorSpec

    image = np.zeros((10, 12, 3), np.uint8)
    with Segmenter.load(model_dir) as segmenter:
        spec = TensorSpec("text_features", ("batch", 77, 32), "float32")
        segmenter.manifest = dataclasses.replace(segmenter.manifest, fusion="addition",
                                                 inputs=(*segmenter.manifest.inputs, spec))
        with pytest.raises(ValueError, match=r"needs text_features of shape \(77, 32\) per image"):
            segmenter.predict(image)
        with pytest.raises(ValueError, match=r"must have shape \(77, 32\) \(one for all\) or \(2, 77, 32\)"):
            segmenter.predict_batch([image, image], text_features=np.zeros((3, 77, 32), np.float32))
        assert segmenter.runner.count == 0


def test_listed_artifact_that_is_missing(edited_model_dir):
    from mrdl_runtime import ManifestError, Segmenter

    copy = edited_model_dir(lambda d: None)
    (copy / "model.onnx").unlink()
    with pytest.raises(ManifestError, match="lists artifact 'fp32' as model.onnx, but .* does not exist"):
        Segmenter.load(copy, backend="onnxruntime-cpu")


def test_precision_that_was_not_exported(model_dir):
    from mrdl_runtime import BackendUnavailableError, Segmenter

    for backend in ("auto", "onnxruntime-cpu"):
        with pytest.raises(BackendUnavailableError, match="has no int8 ONNX model"):
            Segmenter.load(model_dir, backend=backend, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter.load(model_dir, precision="int4")


def test_unknown_backend_name(model_dir):
    from mrdl_runtime import Segmenter

    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        Segmenter.load(model_dir, backend="openvino")


def test_named_unavailable_backends_are_errors_not_fallbacks(model_dir):
    from mrdl_runtime import BackendUnavailableError, Segmenter
    from mrdl_runtime.onnxruntime_runner import available_providers

    with pytest.raises(BackendUnavailableError, match="backend tensorrt .* has no TensorRT engine .*--trt"):
        Segmenter.load(model_dir, backend="tensorrt")
    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA; the unavailable-CUDA path cannot be shown here")
    for backend in ("onnxruntime-cuda", "onnxruntime-tensorrt"):
        with pytest.raises(BackendUnavailableError, match=f"backend {backend} .* no .*ExecutionProvider"):
            Segmenter.load(model_dir, backend=backend)


def test_runner_refuses_a_provider_the_build_lacks(model_dir):
    from mrdl_runtime import BackendUnavailableError
    from mrdl_runtime.onnxruntime_runner import OnnxRuntimeRunner, available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has CUDA")
    runner = OnnxRuntimeRunner(model_dir / "model.onnx", backend="onnxruntime-cuda")
    with pytest.raises(BackendUnavailableError, match="lacks"):
        runner.open()
    assert not runner.is_open


def test_auto_says_what_it_picked_and_why(model_dir, caplog):
    from mrdl_runtime import Segmenter

    with caplog.at_level(logging.INFO, logger="mrdl_runtime"), Segmenter.load(model_dir) as segmenter:
        assert segmenter.backend == "onnxruntime-cpu"
    assert "auto picked onnxruntime-cpu because not tensorrt:" in caplog.text
    assert "has no TensorRT engine" in segmenter.reason and "not onnxruntime-cuda" in segmenter.reason


def test_auto_picks_native_tensorrt_only_with_an_engine(edited_model_dir):
    from mrdl_runtime import load_manifest, select_backend

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed: auto would pick the (absent) engine")
    engine = {"file": "model.engine", "bytes": 0, "sha256": "0" * 64, "precision": "fp32"}
    copy = edited_model_dir(lambda d: d["artifacts"].update(tensorrt=engine))
    backend, reason = select_backend(load_manifest(copy), "auto")
    assert backend == "onnxruntime-cpu" and "not tensorrt: the tensorrt package is not installed" in reason


def test_runner_lifecycle_and_timing(model_dir):
    from mrdl_runtime.errors import NotOpenError
    from mrdl_runtime.onnxruntime_runner import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(model_dir / "model.onnx")
    feeds = {"image": np.zeros((2, 3, 64, 64), np.float32)}
    with pytest.raises(NotOpenError, match="not open; call open"):
        runner.infer(feeds)
    with runner:
        assert runner.is_open and runner.count == 0 and runner.mean_latency_ms == 0.0
        with pytest.raises(RuntimeError, match="already open"):
            runner.open()
        for _ in range(3):
            out = runner.infer(feeds)
        assert out["probabilities"].shape == (2, 1, 64, 64)
        assert runner.count == 3 and runner.last_latency_ms > 0 and runner.mean_latency_ms > 0
        assert "3 inferences" in repr(runner)
    assert not runner.is_open
    runner.close()  # closing twice is harmless
    with runner:  # reopening starts a fresh count
        assert runner.count == 0


def test_closed_segmenter_refuses_to_predict(model_dir):
    """A Segmenter has no open(): after close() it says to load the model again (a MrdlError, still a RuntimeError)."""
    from mrdl_runtime import MrdlError, Segmenter
    from mrdl_runtime.errors import NotOpenError

    segmenter = Segmenter.load(model_dir)
    segmenter.close()
    for call in (lambda: segmenter.predict(np.zeros((8, 8, 3), np.uint8)),
                 lambda: segmenter.predict_batch([np.zeros((8, 8, 3), np.uint8)]),
                 lambda: segmenter.infer(np.zeros((1, 3, 64, 64), np.float32))):
        with pytest.raises(NotOpenError, match="Segmenter of .* was closed; load it again") as info:
            call()
        assert isinstance(info.value, MrdlError) and isinstance(info.value, RuntimeError)
        assert "open()" not in str(info.value)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_segmenter_api_refuses_or_takes_unusual_containers(model_dir):
    """np.matrix images are segmented as their values; an empty or non-array batch for infer and a non-iterable
    for predict_batch are refused naming what was expected; any iterable of images is a batch."""
    from mrdl_runtime import ImageInputError, Segmenter

    gray = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    with Segmenter.load(model_dir) as segmenter:
        expected = segmenter.predict(gray)
        from_matrix = segmenter.predict(np.asmatrix(gray))
        assert np.array_equal(from_matrix.mask, expected.mask) and type(from_matrix.mask) is np.ndarray
        with pytest.raises(ImageInputError, match=r"infer expects a float32 numpy array, a batch of shape "
                                                  r"\(B, 3, 64, 64\) with B >= 1; got float32 \(0, 3, 64, 64\)$"):
            segmenter.infer(np.zeros((0, 3, 64, 64), np.float32))
        with pytest.raises(ImageInputError, match="infer expects a float32 numpy array, .*; got list$"):
            segmenter.infer(np.zeros((1, 3, 64, 64), np.float32).tolist())
        batch = segmenter.predict_batch(image for image in (gray, gray))
        assert len(batch) == 2 and all(np.array_equal(p.mask, expected.mask) for p in batch)
        assert segmenter.predict_batch(iter(())) == []
        for not_a_batch in (5, "image.png", None):
            with pytest.raises(ImageInputError, match="predict_batch expects a list \\(or any iterable\\)"):
                segmenter.predict_batch(not_a_batch)


def test_native_tensorrt_without_tensorrt_is_a_clear_error(model_dir):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed; see test_native_tensorrt_engine")
    from mrdl_runtime import BackendUnavailableError
    from mrdl_runtime.tensorrt_runner import TensorRTRunner

    runner = TensorRTRunner(model_dir / "model.engine", max_batch=4)
    with pytest.raises(BackendUnavailableError, match=r"pip install 'mrdl\[tensorrt\]'"):
        runner.open()
    assert not runner.is_open


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_native_tensorrt_engine(model_dir):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it needs an NVIDIA GPU machine)")
    if not (model_dir / "model.engine").is_file():
        pytest.skip("the tiny export has no model.engine (mrdl-export --trt needs TensorRT and a GPU)")
    from mrdl_runtime import Segmenter

    image = np.random.default_rng(0).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    with Segmenter.load(model_dir, backend="tensorrt") as engine, Segmenter.load(model_dir) as reference:
        ours, theirs = engine.predict(image, at_model_size=True), reference.predict(image, at_model_size=True)
    assert np.abs(ours.probabilities - theirs.probabilities).max() < 1e-3
