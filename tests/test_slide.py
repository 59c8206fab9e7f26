"""Whole slides (runtime/slide*.py, mrdl predict-slide): mpp, level choice, parity with the tiled
runtime, tissue skipping, bounded reads, outputs, resume and the window-batch server path.

The tiny model gets ``source_size`` 256x256 and ``source_mpp`` 0.25 here, so it sees 1.0 um per
model pixel: a slide at 0.25 um/px with 4x levels is read at level 1 without resampling.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("tiffslide")
pytest.importorskip("imagecodecs")

from mrdl_runtime.slide_reader import SlideError, SlideLevel, SlideReader, choose_level  # noqa: E402

MPP = 0.25


def write_slide(path, level0: np.ndarray, *, kind: str = "svs", mpp: float | None = MPP, levels: int = 3,
                tile: int = 128) -> None:
    """A pyramidal slide from an (H, W, 3) uint8 array: Aperio-style SVS (JPEG tiles, MPP in the
    description), OME-TIFF (SubIFDs, PhysicalSize) or a generic TIFF (resolution tags); 4x levels."""
    pyramid = [level0]
    for _ in range(levels - 1):
        pyramid.append(np.ascontiguousarray(pyramid[-1][::4, ::4]))
    height, width = level0.shape[:2]
    if kind == "svs":
        mpp_text = f"|MPP = {mpp}" if mpp else ""
        with tifffile.TiffWriter(path) as writer:
            writer.write(level0, tile=(tile, tile), compression="jpeg", photometric="rgb",
                         description=f"Aperio Image Library v12.0.15 \n{width}x{height} ({tile}x{tile}) JPEG/RGB "
                                     f"Q=90|AppMag = 40{mpp_text}")
            for level in pyramid[1:]:
                writer.write(level, tile=(tile, tile), compression="jpeg", photometric="rgb",
                             description="Aperio Image Library v12.0.15 \nlevel", subfiletype=1)
        return
    extra = {}
    if kind == "ome":
        metadata = {"axes": "YXS"}
        if mpp:
            metadata.update(PhysicalSizeX=mpp, PhysicalSizeY=mpp, PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm")
        extra = {"metadata": metadata}
    elif mpp:
        extra = {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=kind == "ome") as writer:
        writer.write(level0, tile=(tile, tile), compression="zlib", photometric="rgb", subifds=levels - 1, **extra)
        for level in pyramid[1:]:
            writer.write(level, tile=(tile, tile), compression="zlib", photometric="rgb", subfiletype=1)


def tissue_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """H&E-like texture everywhere (pink background, purple blobs)."""
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = (226, 160, 200)
    yy, xx = np.mgrid[:height, :width]
    for _ in range(max(4, height * width // 2500)):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(4, 12)
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[blob] = rng.integers((80, 30, 120), (140, 80, 180))
    return np.clip(image.astype(np.int16) + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def segmenter(model_dir):
    from mrdl_runtime import Segmenter

    with Segmenter.load(model_dir) as loaded:
        loaded.manifest = dataclasses.replace(loaded.manifest, source_size=(256, 256), source_mpp=MPP)
        yield loaded


@pytest.fixture(scope="module")
def slides(segmenter):
    from mrdl_runtime.slide import SlideSegmenter

    return SlideSegmenter.in_process(segmenter)


# ----------------------------------------------------------------------------- reader, mpp, level


@pytest.mark.parametrize("kind, source", [("svs", "Aperio MPP"), ("ome", "OME PhysicalSize"),
                                          ("tif", "TIFF resolution tags")])
def test_reader_reads_mpp_and_levels_from_each_format(tmp_path, kind, source):
    image = tissue_image(512, 384)
    path = tmp_path / f"s.{kind}"
    write_slide(path, image, kind=kind, mpp=0.5)
    with SlideReader(path) as reader:
        assert reader.mpp_source == source
        assert [level.size for level in reader.levels] == [(512, 384), (128, 96), (32, 24)]
        assert [level.mpp for level in reader.levels] == [(0.5, 0.5), (2.0, 2.0), (8.0, 8.0)]
        region = reader.read(0, (100, 140), (50, 300))
        if kind != "svs":  # lossless: the exact pixels
            assert np.array_equal(region, image[100:140, 50:300])
        assert np.array_equal(reader.rows(0, 100, 140), reader.read(0, (100, 140), (0, 384)))


@pytest.mark.parametrize("kind", ["svs", "ome", "tif"])
def test_slide_without_mpp_is_refused_naming_mpp(tmp_path, kind):
    path = tmp_path / f"s.{kind}"
    write_slide(path, tissue_image(256, 256), kind=kind, mpp=None)
    with pytest.raises(SlideError, match="--mpp"):
        SlideReader(path)
    with SlideReader(path, mpp=0.5) as reader:
        assert reader.mpp_source == "--mpp" and reader.levels[1].mpp == (2.0, 2.0)


def test_level_choice_is_the_coarsest_fine_enough():
    levels = tuple(SlideLevel(i, (4096 // 4 ** i,) * 2, (0.25 * 4 ** i,) * 2) for i in range(3))
    assert choose_level(levels, (1.0, 1.0)).index == 1  # exactly level 1
    assert choose_level(levels, (0.99, 0.99)).index == 1  # within 5 %: level 1 is upsampled by 1 %
    assert choose_level(levels, (0.9, 0.9)).index == 0  # level 1 too coarse: read level 0, downsample
    assert choose_level(levels, (100.0, 100.0)).index == 2
    with pytest.raises(SlideError, match="coarser than the model"):
        choose_level(levels, (0.1, 0.1))


def test_model_without_source_mpp_is_refused_naming_the_export_option(segmenter, tmp_path):
    from mrdl_runtime.slide import SlideSegmenter

    path = tmp_path / "s.svs"
    write_slide(path, tissue_image(256, 256))
    manifest = dataclasses.replace(segmenter.manifest, source_mpp=None)
    with pytest.raises(SlideError, match="mrdl-export --source-mpp"):
        SlideSegmenter(manifest, lambda windows: None).predict_slide(path, tmp_path / "out")


def test_manifest_source_mpp_is_optional_and_validated(model_dir):
    from mrdl_runtime.manifest import ManifestError, parse_manifest

    doc = json.loads((model_dir / "model.json").read_text())
    assert parse_manifest(doc, model_dir).source_mpp is None
    assert parse_manifest({**doc, "source_mpp": 0.25}, model_dir).source_mpp == 0.25
    for bad in (0, -1, "0.25", True, 1e4):
        with pytest.raises(ManifestError, match="source_mpp"):
            parse_manifest({**doc, "source_mpp": bad}, model_dir)


def test_export_source_mpp_from_option_or_provenance(tiny_checkpoint):
    pytest.importorskip("safetensors")
    from mrdl_export.manifest import parse_source_mpp, source_mpp_for
    from mrdl_export.options import ExportError

    assert source_mpp_for(None, tiny_checkpoint) is None  # an untrained checkpoint records none
    assert source_mpp_for("0.5", tiny_checkpoint) == 0.5
    for bad in ("abc", "0", "-1", "2000"):
        with pytest.raises(ExportError, match="microns per pixel"):
            parse_source_mpp(bad)


# ----------------------------------------------------------------------------- parity with the tiled runtime


def _mask(out, stem="s") -> np.ndarray:
    return tifffile.imread(out / f"{stem}.mask.ome.tif")


@pytest.mark.parametrize("blend", ["gaussian", "constant"])
@pytest.mark.parametrize("kind, size", [("svs", (1100, 900)), ("ome", (700, 1300))])
def test_slide_mask_equals_the_tiled_runtime_on_the_same_pixels(segmenter, slides, tmp_path, blend, kind, size):
    """Level 0 at the model's source mpp: the slide path is the tiled runtime at model size, to the bit
    (same resampling, windows, blending order and threshold; JPEG tiles compared as decoded)."""
    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / f"s.{kind}"
    write_slide(path, tissue_image(*size), kind=kind, levels=1)
    with SlideReader(path) as reader:
        pixels = reader.read(0, (0, size[0]), (0, size[1]))
    out = tmp_path / "out"
    result = slides.predict_slide(path, out, SlideOptions(tissue_mask=False, blend=blend, geojson=False))
    expected = segmenter.predict(pixels, tile=True, at_model_size=True, blend=blend, with_probabilities=False).mask
    assert result.level.index == 0 and result.grid == expected.shape
    assert 0.05 < expected.mean() < 0.95  # a mask with both classes: the comparison says something
    assert np.array_equal(_mask(out), expected)


def test_resampled_level_equals_the_tiled_runtime(segmenter, slides, tmp_path):
    """A 0.5 um/px slide read at level 0 and resampled by 1/2 = the tiled runtime with source_size 128."""
    from mrdl_runtime.slide import SlideOptions

    pixels = tissue_image(600, 820, seed=3)
    path = tmp_path / "half.ome.tif"
    write_slide(path, pixels, kind="ome", mpp=0.5, levels=2)
    out = tmp_path / "out"
    result = slides.predict_slide(path, out, SlideOptions(tissue_mask=False, geojson=False))
    reference = dataclasses.replace(segmenter.manifest, source_size=(128, 128))
    original = segmenter.manifest
    try:
        segmenter.manifest = reference
        expected = segmenter.predict(pixels, tile=True, at_model_size=True, with_probabilities=False).mask
    finally:
        segmenter.manifest = original
    assert result.level.index == 0 and result.grid == (300, 410) == expected.shape
    assert np.array_equal(_mask(out, "half"), expected)
