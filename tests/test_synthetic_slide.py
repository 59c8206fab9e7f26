"""Synthetic slides (mrdl_bench.synthetic_slide): readable by tiffslide and tifffile with the right
resolution and pyramid, and holding each placed crop's pixels (exactly with zlib; JPEG within a
stated tolerance)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import MONUSEG

tifffile = pytest.importorskip("tifffile", reason="synthetic slides need the slide extra (tifffile)")
tiffslide = pytest.importorskip("tiffslide", reason="reading slides needs the slide extra (tiffslide)")

from mrdl_bench.synthetic_slide import (  # noqa: E402
    BACKGROUND, SlideOptions, build_synthetic_slide, crop_mask, crop_pixels, main, read_placements, truth_rows,
)

# JPEG at quality 90 moves a pixel by a few levels on average; edges of nuclei move more.
JPEG_MEAN_ERROR = 4.0
JPEG_P99_ERROR = 30


def region(slide_path, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Pixels of a level through tiffslide (location in level-0 pixels, size in level pixels)."""
    with tiffslide.TiffSlide(slide_path) as slide:
        return slide.read_region((x, y), level, (width, height), as_array=True)


@pytest.fixture(scope="module")
def tiny_svs(tmp_path_factory):
    options = SlideOptions(width=2048, height=1800, crop=512, tissue_fraction=0.3, kind="svs", compression="jpeg")
    return build_synthetic_slide(tmp_path_factory.mktemp("svs") / "tiny.svs", options)


@pytest.fixture(scope="module")
def tiny_ome(tmp_path_factory):
    options = SlideOptions(width=2048, height=2048, crop=512, tissue_fraction=0.5, kind="ome-tiff",
                           compression="zlib", mpp=0.5, magnification=20, seed=3)
    return build_synthetic_slide(tmp_path_factory.mktemp("ome") / "tiny.ome.tif", options)


def test_svs_has_aperio_resolution_levels_and_thumbnail(tiny_svs):
    with tiffslide.TiffSlide(tiny_svs.path) as slide:
        assert slide.properties["tiffslide.vendor"] == "aperio"
        assert float(slide.properties["tiffslide.mpp-x"]) == float(slide.properties["tiffslide.mpp-y"]) == 0.25
        assert float(slide.properties["tiffslide.objective-power"]) == 40
        assert slide.level_dimensions == ((2048, 1800), (512, 450), (128, 112))
        assert slide.level_downsamples[:2] == pytest.approx((1.0, 4.0))
    with tifffile.TiffFile(tiny_svs.path) as tif:
        assert tif.is_svs
        assert tif.pages[0].is_tiled and tif.pages[0].compression == tifffile.COMPRESSION.JPEG
        assert not tif.pages[1].is_tiled and max(tif.pages[1].shape[:2]) == 1024  # Aperio's thumbnail page
        assert [level.shape for level in tif.series[0].levels] == [(1800, 2048, 3), (450, 512, 3), (112, 128, 3)]


def test_svs_holds_each_crop_within_jpeg_tolerance(tiny_svs):
    assert tiny_svs.placements and "procedural" in tiny_svs.source
    for placement in tiny_svs.placements:
        read = region(tiny_svs.path, 0, placement.x, placement.y, placement.width, placement.height)
        error = np.abs(read.astype(np.int16) - crop_pixels(placement).astype(np.int16))
        assert error.mean() < JPEG_MEAN_ERROR and np.percentile(error, 99) <= JPEG_P99_ERROR


def test_ome_tiff_is_exact_with_zlib_and_carries_its_resolution(tiny_ome):
    with tifffile.TiffFile(tiny_ome.path) as tif:
        assert tif.is_ome
        pixels = tif.series[0].levels[0].asarray()
        assert len(tif.series[0].levels) == 3
        assert 'PhysicalSizeX="0.5"' in tif.ome_metadata and 'PhysicalSizeXUnit="µm"' in tif.ome_metadata
    with tiffslide.TiffSlide(tiny_ome.path) as slide:
        assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
        assert slide.level_dimensions == ((2048, 2048), (512, 512), (128, 128))
    covered = np.zeros(pixels.shape[:2], bool)
    for placement in tiny_ome.placements:
        window = np.s_[placement.y:placement.y + placement.height, placement.x:placement.x + placement.width]
        np.testing.assert_array_equal(pixels[window], crop_pixels(placement))
        covered[window] = True
    assert (pixels[~covered] == BACKGROUND).all()
    assert covered.mean() == pytest.approx(tiny_ome.tissue_fraction) == pytest.approx(0.5, abs=0.07)
    first = tiny_ome.placements[0]
    np.testing.assert_array_equal(region(tiny_ome.path, 0, first.x, first.y, 64, 48), crop_pixels(first)[:48, :64])


def test_lower_levels_are_area_averaged_crops(tiny_ome):
    first = tiny_ome.placements[0]
    level1 = region(tiny_ome.path, 1, first.x, first.y, first.width // 4, first.height // 4)
    crop = crop_pixels(first).astype(np.float32)
    averaged = crop.reshape(first.height // 4, 4, first.width // 4, 4, 3).mean(axis=(1, 3))
    assert np.abs(level1 - averaged).max() <= 1  # Pillow's box filter rounds


def test_placements_file_round_trips(tiny_ome):
    assert read_placements(tiny_ome.placements_path) == tiny_ome.placements
    mask = crop_mask(tiny_ome.placements[0])
    assert mask.shape == (512, 512) and set(np.unique(mask)) == {0, 1}


def test_truth_rows_hold_each_crops_mask_and_nothing_else(tiny_ome):
    whole = truth_rows(tiny_ome.placements, 0, 2048, 2048)
    banded = np.concatenate([truth_rows(tiny_ome.placements, y, min(y + 300, 2048), 2048) for y in range(0, 2048, 300)])
    np.testing.assert_array_equal(banded, whole)
    covered = np.zeros(whole.shape, bool)
    for placement in tiny_ome.placements:
        window = np.s_[placement.y:placement.y + placement.height, placement.x:placement.x + placement.width]
        np.testing.assert_array_equal(whole[window], crop_mask(placement))
        covered[window] = True
    assert whole.any() and not whole[~covered].any()


@pytest.mark.skipif(not MONUSEG.is_dir(), reason=f"MoNuSeg not found at {MONUSEG}")
def test_monuseg_crops_and_their_masks(tmp_path):
    from PIL import Image

    options = SlideOptions(width=2200, height=1200, crop=600, tissue_fraction=0.5, kind="ome-tiff",
                           compression="zlib", monuseg=str(MONUSEG))
    slide = build_synthetic_slide(tmp_path / "monuseg.ome.tif", options)
    assert slide.source.startswith("MoNuSeg") and slide.tissue_fraction == pytest.approx(0.5, abs=0.1)
    pixels = tifffile.imread(slide.path)
    for placement in slide.placements:
        source = np.asarray(Image.open(placement.image).convert("RGB"))
        crop = source[placement.source_y:placement.source_y + 600, placement.source_x:placement.source_x + 600]
        np.testing.assert_array_equal(pixels[placement.y:placement.y + 600, placement.x:placement.x + 600], crop)
        truth = np.asarray(Image.open(placement.mask).convert("L"))
        expected = truth[placement.source_y:placement.source_y + 600, placement.source_x:placement.source_x + 600] > 127
        np.testing.assert_array_equal(crop_mask(placement), expected)


def test_cli_says_where_crops_came_from_and_refuses_bad_options(tmp_path, capsys):
    assert main([str(tmp_path / "cli.ome.tif"), "--size", "1024", "--crop", "256", "--compression", "zlib"]) == 0
    out = capsys.readouterr().out
    assert "procedural" in out and "ome-tiff" in out and (tmp_path / "cli.ome.tif.placements.json").is_file()
    assert main([str(tmp_path / "bad.svs"), "--size", "1024", "--tissue-fraction", "1.5"]) == 2
    assert "tissue_fraction" in capsys.readouterr().err
    assert main([str(tmp_path / "bad.svs"), "--size", "1024", "--monuseg", str(tmp_path)]) == 2
    assert "no MoNuSeg images" in capsys.readouterr().err
    assert not (tmp_path / "bad.svs").exists()


def test_geojson_stream_counts_the_truths_nuclei(tmp_path):
    pytest.importorskip("shapely", reason="GeoJSON output needs the slide extra (shapely)")
    from test_slide_geojson import reference_components

    from mrdl_bench.geojson_stream import stream_truth
    from mrdl_bench.synthetic_slide import layout

    options = SlideOptions(width=600, height=520, crop=256, tissue_fraction=0.5, seed=2)
    objects, _ = stream_truth(options, tmp_path / "truth.geojson", band=37)
    truth = truth_rows(layout(options), 0, 520, 600)
    assert objects == len(reference_components(truth)) > 10
