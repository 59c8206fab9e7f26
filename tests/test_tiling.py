"""Tiled inference at the training scale (docs/tiling.md): geometry, weights, exact streamed
resampling, stitching without seams, agreement with the untiled path, options, memory, and the
source_size chain (manifest, export, training).

Tolerances stated here, measured on the ``tiny`` model:
* tiled vs untiled on an image of exactly the source size: probabilities within 1e-6 (one window;
  ``(w * p) / w`` differs from ``p`` by float32 rounding only), masks equal;
* seams: across every window border the mean jump of the stitched probabilities is at most 1.5x
  the median neighbour difference (a model with strong window-edge effects and constant weights
  without overlap is measured too, to show the figure detects seams).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tracemalloc

import numpy as np
import pytest
from PIL import Image
from reexport import rewrite_manifest

from mrdl_runtime import resample
from mrdl_runtime.manifest import ManifestError, parse_manifest
from mrdl_runtime.resample import resample_rgb, resized_strips
from mrdl_runtime.tiling import (TileOptions, blend_weights, mask_at, plan_tiles, probabilities_at, resampled_size,
                                 should_tile, stitch, window_starts)

SEAM_RATIO_LIMIT = 1.5


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth blobs (nuclei-like) on a light background with a little noise, HxWx3 uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    dark = np.zeros((height, width))
    for _ in range(max(4, height * width // 2500)):
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(5, 12)
        dark += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    image = 230 - dark[..., None] * np.array([110.0, 70.0, 40.0]) + rng.normal(0, 3, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _seam_ratio(probability: np.ndarray, starts: list[int], window: int) -> float:
    """max over window borders (columns where a window starts or ends) of the mean |jump| across
    it, over the median mean |difference| between neighbouring columns."""
    columns = np.abs(np.diff(probability.astype(np.float64), axis=1)).mean(axis=0)  # [j]: between j and j+1
    borders = {s for s in starts if s > 0} | {s + window for s in starts if s + window < probability.shape[1]}
    return max(columns[b - 1] for b in borders) / np.median(columns)


# ----------------------------------------------------------------------------- geometry and weights

def test_window_starts_clamp_the_last_window_and_cover_the_axis():
    assert window_starts(896, 224, 0.25) == [0, 168, 336, 504, 672]
    starts = window_starts(4480, 224, 0.25)
    assert len(starts) == 27 and starts[-1] == 4256 and starts[-2] == 25 * 168
    assert window_starts(224, 224, 0.25) == [0]
    assert window_starts(100, 64, 0.0) == [0, 36]  # stride 64, the second window clamped to end at 100
    assert window_starts(70, 64, 0.999) == list(range(7))  # stride floor(0.064) -> 1
    for length, window, overlap in [(300, 64, 0.25), (1000, 96, 0.5), (65, 64, 0.9), (5000, 224, 0.1)]:
        starts = window_starts(length, window, overlap)
        stride = max(1, math.floor(window * (1 - overlap)))
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="shorter than the window"):
        window_starts(63, 64, 0.25)


def test_resampled_size_and_auto_rule():
    base, source = (224, 224), (1000, 1000)
    assert resampled_size((1000, 1000), source, base) == (224, 224)
    assert resampled_size((4000, 20000), source, base) == (896, 4480)
    assert resampled_size((1001, 1003), source, base) == (224, 225)  # 224.224 -> 224, 224.672 -> 225
    assert resampled_size((2, 1), source, base) == (1, 1)  # at least one pixel
    assert resampled_size((375, 125), (250, 250), (64, 64)) == (96, 32)  # 32.0 exactly; 96.0
    assert not should_tile((1500, 1500), source, "auto") and should_tile((1501, 10), source, "auto")
    assert should_tile((10, 1501), source, "auto") and not should_tile((1000, 1000), source, "auto")
    assert should_tile((100, 100), source, True) and not should_tile((50000, 50000), source, False)
    assert not should_tile((50000, 50000), None, "auto")
    with pytest.raises(ValueError, match="--source-size"):
        should_tile((100, 100), None, True)


def test_blend_weights():
    assert np.array_equal(blend_weights((64, 48), "constant"), np.ones((64, 48), np.float32))
    weights = blend_weights((64, 48), "gaussian")
    assert weights.dtype == np.float32 and weights.shape == (64, 48)
    assert np.array_equal(weights, weights[::-1]) and np.array_equal(weights, weights[:, ::-1])
    assert math.exp(-16) < weights.min() < 1e-6  # unclamped corners, never zero
    # an independent float64 formula: MONAI's separable gaussian, sigma = 0.125 * side
    rows, cols = (np.exp(-((np.arange(n) - (n - 1) / 2) ** 2) / (2 * (0.125 * n) ** 2)) for n in (64, 48))
    expected = np.outer(rows, cols).astype(np.float32)
    assert np.max(np.abs(weights - expected) / expected) <= 1.2e-7  # equal up to 1 float32 ulp
    centre = weights[31:33, 23:25]
    assert centre.max() == weights.max() and weights.max() < 1  # even side: no pixel at d = 0


def test_bad_options_are_refused_with_the_accepted_values():
    for bad, pattern in [(dict(tile="yes"), "tile must be 'auto', True or False"),
                         (dict(tile=1), "tile must be"), (dict(tile=None), "tile must be"),
                         (dict(overlap=1.0), r"0 <= overlap <= 0.9"), (dict(overlap=0.95), "100 times"), (dict(overlap=-0.1), "overlap"),
                         (dict(overlap=float("nan")), "overlap"), (dict(overlap="0.5"), "overlap"),
                         (dict(overlap=True), "overlap"), (dict(blend="linear"), "gaussian, constant")]:
        with pytest.raises(ValueError, match=pattern):
            TileOptions(**bad)
    with pytest.raises(ValueError, match="blend must be"):
        blend_weights((8, 8), "cosine")


# ----------------------------------------------------------------------------- resampling

def _pillow_horizontal_first(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Two single-axis Pillow resizes, width first: the rule of docs/tiling.md, computed by Pillow."""
    image = Image.fromarray(array)
    if size[1] != array.shape[1]:
        image = image.resize((size[1], array.shape[0]), Image.BILINEAR)
    if size[0] != array.shape[0]:
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(image)


@pytest.mark.parametrize("shape, size", [((181, 233), (40, 53)), ((30, 20), (97, 45)), ((120, 40), (31, 77)),
                                         ((64, 50), (64, 17)), ((50, 64), (13, 64)), ((9, 9), (9, 9))])
def test_streamed_resampling_is_exact_for_any_strip_height(shape, size, monkeypatch):
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    probability = rng.random(size, dtype=np.float32)
    expected_rgb = _pillow_horizontal_first(rgb, size)
    expected_map = _pillow_horizontal_first(probability, shape)
    for strip_bytes in (resample.STRIP_BYTES, 1, 5000):  # whole image, one output row, a few rows per strip
        monkeypatch.setattr(resample, "STRIP_BYTES", strip_bytes)
        assert np.array_equal(resample_rgb(rgb, size), expected_rgb)
        assert np.array_equal(np.concatenate([rows for _, rows in resized_strips(probability, shape)]), expected_map)


def test_masks_from_strips_equal_the_whole_map_rule():
    rng = np.random.default_rng(3)
    for classes in (1, 3):
        stitched = rng.random((classes, 23, 31), dtype=np.float32)
        stitched[:, 5, 5] = 0.25  # ties: the first class wins
        probabilities = probabilities_at(stitched, (70, 50))
        expected = (probabilities[0] > 0.5) if classes == 1 else probabilities.argmax(axis=0)
        assert np.array_equal(mask_at(stitched, (70, 50), threshold=0.5), expected.astype(np.uint8))


# ----------------------------------------------------------------------------- stitching

def _vignette_model(batch: np.ndarray) -> np.ndarray:
    """A fake model with strong window-edge effects: the red channel times a vignette (1 at the centre,
    0.4 at the border), so windows disagree where they overlap."""
    size = batch.shape[2:]
    ramps = [1 - 0.6 * np.abs(np.linspace(-1, 1, n)) for n in size]
    return (batch[:, :1] * np.outer(*ramps)).astype(np.float32)


def test_gaussian_blending_leaves_no_seam_where_hard_borders_would():
    resampled = _image(300, 280)
    plan = plan_tiles((300, 280), (64, 64), (64, 64), 0.25)
    columns = sorted({x for _, x in plan.windows})

    def ratio(options: TileOptions) -> float:
        plan = plan_tiles((300, 280), (64, 64), (64, 64), options.overlap)
        stitched = stitch(resampled, plan, _vignette_model, model_size=(64, 64), n_classes=1, max_batch=7,
                          scale=1 / 255, options=options)
        return _seam_ratio(stitched[0], sorted({x for _, x in plan.windows}), 64)

    assert len(columns) == 6
    hard = ratio(TileOptions(True, 0.0, "constant"))
    blended = ratio(TileOptions(True, 0.25, "gaussian"))
    assert hard > 5 * SEAM_RATIO_LIMIT  # the figure sees a seam when there is one
    assert blended < SEAM_RATIO_LIMIT


def test_stitch_of_a_position_independent_model_is_the_model_itself():
    """A model that maps each pixel alone gives the same value in every window, so any blend returns it
    exactly where the windows agree (up to float32 rounding of the weighted mean)."""
    resampled = _image(150, 130)
    for blend in ("gaussian", "constant"):
        plan = plan_tiles((150, 130), (64, 64), (64, 64), 0.25)
        stitched = stitch(resampled, plan, lambda batch: batch[:, 1:2].copy(), model_size=(64, 64), n_classes=1,
                          max_batch=4, scale=1 / 255, options=TileOptions(True, 0.25, blend))
        expected = resampled[:, :, 1].astype(np.float32) * np.float32(1 / 255)
        assert stitched.shape == (1, 150, 130)
        assert np.max(np.abs(stitched[0] - expected)) < 1e-6


def test_padding_is_zero_at_the_bottom_and_right():
    plan = plan_tiles((40, 300), (100, 100), (64, 64), 0.25)
    assert plan.resampled_size == (26, 192) and plan.padded_size == (64, 192)
    seen = []

    def record(batch):
        seen.append(batch.copy())
        return batch[:, :1].copy()

    resampled = np.full((26, 192, 3), 200, np.uint8)
    stitched = stitch(resampled, plan, record, model_size=(64, 64), n_classes=1, max_batch=2, scale=1 / 255,
                      options=TileOptions(True))
    windows = np.concatenate(seen)
    assert [len(batch) for batch in seen] == [2, 2] and len(windows) == len(plan.windows) == 4
    assert np.all(windows[:, :, 26:] == 0) and np.all(windows[:, :, :26] == np.float32(200) * np.float32(1 / 255))
    assert stitched.shape == (1, 26, 192)


# ----------------------------------------------------------------------------- with the tiny model

@pytest.fixture(scope="module")
def segmenter(model_dir):
    """The tiny model (64x64 input) as if trained on 100x100 images."""
    from mrdl_runtime import Segmenter

    with Segmenter.load(model_dir) as loaded:
        loaded.manifest = dataclasses.replace(loaded.manifest, source_size=(100, 100))
        yield loaded


@pytest.mark.parametrize("shape", [(100, 100), (100, 150)])
def test_tiled_equals_untiled_at_the_source_size(segmenter, shape):
    segmenter.manifest = dataclasses.replace(segmenter.manifest, source_size=shape)
    try:
        image = _image(*shape, seed=5)
        whole, tiled = segmenter.predict(image, tile=False), segmenter.predict(image, tile=True)
        auto = segmenter.predict(image)
    finally:
        segmenter.manifest = dataclasses.replace(segmenter.manifest, source_size=(100, 100))
    assert tiled.tiled and not whole.tiled and not auto.tiled
    assert np.max(np.abs(tiled.probabilities - whole.probabilities)) <= 1e-6
    assert np.array_equal(tiled.mask, whole.mask)


def test_auto_tiles_large_images_without_seams(segmenter):
    image = _image(400, 330, seed=2)  # 4 x 3.3 the source size -> 256 x 211 at the training scale
    small = _image(120, 90, seed=3)
    results = segmenter.predict_batch([small, image, small], tile="auto")
    assert [r.tiled for r in results] == [False, True, False]
    assert results[1].probabilities.shape == (1, 400, 330) and results[1].mask.shape == (400, 330)
    assert np.array_equal(results[0].probabilities, results[2].probabilities)
    alone = segmenter.predict(small).probabilities  # ONNX Runtime's sums differ a little with the batch size
    assert np.max(np.abs(results[0].probabilities - alone)) < 1e-5
    masks_only = segmenter.predict(image, with_probabilities=False)
    assert masks_only.probabilities is None and np.array_equal(masks_only.mask, results[1].mask)
    at_scale = segmenter.predict(image, at_model_size=True)
    assert at_scale.tiled and at_scale.probabilities.shape == (1, 256, 211)
    plan = plan_tiles((400, 330), (100, 100), (64, 64), 0.25)
    rows, cols = sorted({y for y, _ in plan.windows}), sorted({x for _, x in plan.windows})
    stitched = at_scale.probabilities[0]
    assert _seam_ratio(stitched, cols, 64) < SEAM_RATIO_LIMIT
    assert _seam_ratio(np.ascontiguousarray(stitched.T), rows, 64) < SEAM_RATIO_LIMIT


def test_segmenter_refuses_bad_options_and_unknown_source_size(segmenter, model_dir):
    from mrdl_runtime import Segmenter

    image = _image(64, 64)
    with pytest.raises(ValueError, match="overlap must be"):
        segmenter.predict(image, overlap=1.5)
    with pytest.raises(ValueError, match="blend must be"):
        segmenter.predict(image, blend="max")
    with Segmenter.load(model_dir) as plain:
        assert plain.manifest.source_size is None
        assert not plain.predict(_image(400, 400)).tiled  # unknown training scale: auto never tiles
        with pytest.raises(ValueError, match="source_size"):
            plain.predict(image, tile=True)


def test_a_large_image_stays_within_the_memory_bound(segmenter):
    """4000 x 3000 RGB at 4x the source size: besides the 11 MiB uint8 mask it returns, a masks-only
    tiled prediction allocates less than 24 MiB in numpy/Python (tracemalloc; Pillow's own buffers are
    strip-sized), where one float32 map at the input resolution would be 46 MiB."""
    segmenter.manifest = dataclasses.replace(segmenter.manifest, source_size=(1000, 1000))
    try:
        image = np.zeros((4000, 3000, 3), np.uint8)
        image[::7] = 200
        tracemalloc.start()
        prediction = segmenter.predict(image, with_probabilities=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        segmenter.manifest = dataclasses.replace(segmenter.manifest, source_size=(100, 100))
    assert prediction.tiled and prediction.mask.shape == (4000, 3000)
    assert peak - prediction.mask.nbytes < 24 * 2 ** 20, f"peak {peak / 2**20:.1f} MiB"


def test_peak_rss_script_measures_a_tiled_prediction(model_dir, tmp_path, repo_root):
    import subprocess
    import sys

    deploy = tmp_path / "deploy"
    shutil.copytree(model_dir, deploy)
    rewrite_manifest(deploy, {"source_size": [150, 150]})
    args = [sys.executable, str(repo_root / "benchmarks" / "peak_rss.py"), "--tiled", "--size", "300",
            "--model-dir", str(deploy), "--workdir", str(tmp_path)]
    within = subprocess.run([*args, "--limit-mb", "100000"], capture_output=True, text=True)
    assert within.returncode == 0, within.stderr
    assert "tiled=True, mask (300, 300)" in within.stdout
    assert "peak RSS of a tiled prediction on one 300x300 RGB image (in memory, counted):" in within.stdout
    above = subprocess.run([*args, "--limit-mb", "1"], capture_output=True, text=True)
    assert above.returncode == 1 and "ABOVE the limit of 1 MB" in above.stdout


# ----------------------------------------------------------------------------- source_size chain

def test_manifest_source_size_is_optional_and_validated(model_dir):
    doc = json.loads((model_dir / "model.json").read_text())
    assert parse_manifest(doc, model_dir).source_size is None
    assert parse_manifest({**doc, "source_size": [1000, 800]}, model_dir).source_size == (1000, 800)
    for bad in ([1000], [0, 5], [1000.0, 1000], [True, 5], "1000x1000", [5, 2 ** 20 + 1], None):
        with pytest.raises(ManifestError, match="source_size"):
            parse_manifest({**doc, "source_size": bad}, model_dir)


def test_export_writes_source_size_from_option_or_provenance(tiny_checkpoint, tmp_path):
    from mrdl_export.manifest import parse_source_size, source_size_for
    from mrdl_export.options import ExportError, ExportOptions

    assert parse_source_size("1000x800") == (1000, 800) and parse_source_size(" 7 X 9 ") == (7, 9)
    for bad in ("1000", "0x5", "ax5", "5x5x5", "9999999x5"):
        with pytest.raises(ExportError, match="HxW"):
            parse_source_size(bad)
    with pytest.raises(ExportError, match="--source-size"):
        ExportOptions(source_size="1000").validate()
    assert source_size_for(None, tiny_checkpoint) is None  # saved without a source_size in its provenance
    assert source_size_for("640x480", tiny_checkpoint) == (640, 480)
    from mrdl.checkpoint import load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(tiny_checkpoint)
    recorded = save_checkpoint(tmp_path / "recorded.safetensors", model, provenance={"source_size": [1000, 1000]})
    assert source_size_for(None, recorded) == (1000, 1000)
    assert source_size_for("512x512", recorded) == (512, 512)  # the option overrides


def test_training_source_size_is_the_median_of_the_image_sizes(tmp_path):
    from mrdl.data.dataset import DatasetError, median_source_size

    paths = []
    for i, (height, width) in enumerate([(1000, 1000), (800, 1200), (1000, 900), (1200, 1000)]):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (width, height)).save(paths[-1])
    assert median_source_size(paths) == (1000, 1000)  # median_low of (800, 1000, 1000, 1200), (900, ...)
    assert median_source_size(paths[1:2]) == (800, 1200)
    with pytest.raises(DatasetError):
        median_source_size([])


def test_predict_cli_records_which_images_were_tiled(model_dir, tmp_path):
    from click.testing import CliRunner

    from mrdl_apps.predict import predict

    deploy = tmp_path / "deploy"
    shutil.copytree(model_dir, deploy)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(_image(300, 260, seed=1)).save(images / "large.png")
    Image.fromarray(_image(90, 110, seed=2)).save(images / "small.png")
    runner = CliRunner()
    refused = runner.invoke(predict, [str(deploy), str(images), "--out", str(tmp_path / "a"), "--tile",
                                      "--no-progress"])
    assert refused.exit_code == 1 and "source_size" in refused.output
    rewrite_manifest(deploy, {"source_size": [100, 100]})
    result = runner.invoke(predict, [str(deploy), str(images), "--out", str(tmp_path / "b"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "tiling: 1 images in windows at the training scale (large), 1 whole" in result.output
    record = json.loads((tmp_path / "b" / "predict.json").read_text())
    assert record["tiled"] == {"large": True, "small": False}
    assert record["tiling"] == {"tile": "auto", "overlap": 0.25, "blend": "gaussian", "source_size": [100, 100]}
    forced = runner.invoke(predict, [str(deploy), str(images / "small.png"), "--out", str(tmp_path / "b"),
                                     "--tile", "--blend", "constant", "--overlap", "0.5", "--no-progress"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((tmp_path / "b" / "predict.json").read_text())["tiled"] == {"large": True, "small": True}
    bad = runner.invoke(predict, [str(deploy), str(images), "--out", str(tmp_path / "c"), "--overlap", "1"])
    assert bad.exit_code == 2 and "--overlap" in bad.output
