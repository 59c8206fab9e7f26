"""write_slide_overlay: a synthetic slide's thumbnail and a full-resolution detail with a mask tinted in."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

tifffile = pytest.importorskip("tifffile", reason="slide overlays need the slide extra (tifffile)")
pytest.importorskip("tiffslide", reason="slide overlays need the slide extra (tiffslide)")

from mrdl_bench.synthetic_slide import BACKGROUND, SlideOptions, build_synthetic_slide, crop_mask  # noqa: E402
from mrdl_runtime.files import OVERLAY_ALPHA, OVERLAY_COLOURS  # noqa: E402
from mrdl_runtime.slide_overlay import GAP, overlay_images, write_slide_overlay  # noqa: E402


def write_mask(path, mask: np.ndarray) -> None:
    """A class-index mask as a pyramidal OME-TIFF, the layout predict-slide writes (4x levels, nearest)."""
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(mask, tile=(256, 256), compression="zlib", subifds=1, metadata={"axes": "YX"}, photometric="minisblack")
        tif.write(mask[::4, ::4], tile=(256, 256), compression="zlib", subfiletype=1, metadata=None,
                  photometric="minisblack")


@pytest.fixture(scope="module")
def slide_and_truth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("overlay")
    slide = build_synthetic_slide(folder / "slide.ome.tif", SlideOptions(
        width=2048, height=1536, crop=512, tissue_fraction=0.4, kind="ome-tiff", compression="zlib", seed=1))
    # levels 2048x1536, 512x384, 128x96
    truth = np.zeros((1536, 2048), np.uint8)
    for placement in slide.placements:
        truth[placement.y:placement.y + placement.height, placement.x:placement.x + placement.width] = crop_mask(placement)
    write_mask(folder / "slide.mask.ome.tif", truth)
    return slide, folder / "slide.mask.ome.tif", truth


def tinted(pixels: np.ndarray, label: int = 1) -> np.ndarray:
    colour = OVERLAY_COLOURS[label - 1]
    return np.clip(np.rint((1 - OVERLAY_ALPHA) * pixels.astype(np.float32) + OVERLAY_ALPHA * colour), 0, 255)


def test_detail_tints_exactly_the_masked_pixels(slide_and_truth):
    slide, mask_path, truth = slide_and_truth
    placement = slide.placements[0]
    centre = (placement.y + 256, placement.x + 256)
    thumbnail, detail = overlay_images(slide.path, mask_path, side=300, detail=128, centre=centre)
    window = np.s_[centre[0] - 64:centre[0] + 64, centre[1] - 64:centre[1] + 64]
    original = tifffile.imread(slide.path)[window]
    labels = truth[window]
    assert labels.any() and not labels.all()
    np.testing.assert_array_equal(detail[labels == 0], original[labels == 0])
    np.testing.assert_array_equal(detail[labels == 1], tinted(original[labels == 1]))
    assert max(thumbnail.shape[:2]) <= 300


def test_coarser_mask_is_scaled_to_the_detail_by_nearest_neighbour(slide_and_truth, tmp_path):
    slide, _, truth = slide_and_truth
    half = truth[::2, ::2]  # a mask at twice the slide's microns per pixel
    write_mask(tmp_path / "half.ome.tif", half)
    placement = slide.placements[-1]
    top, left = placement.y + 100, placement.x + 31
    _, detail = overlay_images(slide.path, tmp_path / "half.ome.tif", side=200, detail=90, centre=(top + 45, left + 45))
    original = tifffile.imread(slide.path)[top:top + 90, left:left + 90]
    labels = half[(top + np.arange(90)) // 2][:, (left + np.arange(90)) // 2]
    assert labels.any() and not labels.all()
    np.testing.assert_array_equal(detail[labels == 0], original[labels == 0])
    np.testing.assert_array_equal(detail[labels == 1], tinted(original[labels == 1]))


def test_thumbnail_keeps_background_and_tints_tissue(slide_and_truth):
    slide, mask_path, truth = slide_and_truth
    thumbnail, detail = overlay_images(slide.path, mask_path, side=512, detail=0)
    assert detail is None and thumbnail.shape == (384, 512, 3)  # level 1, the coarsest with 512 pixels
    assert overlay_images(slide.path, mask_path, side=100, detail=0)[0].shape == (48, 64, 3)  # level 2, every 2nd
    coarse = truth[::4, ::4]
    tissue = np.zeros(coarse.shape, bool)
    for placement in slide.placements:
        tissue[placement.y // 4:(placement.y + placement.height) // 4, placement.x // 4:(placement.x + placement.width) // 4] = True
    assert (thumbnail[~tissue] == BACKGROUND).all()
    green = thumbnail[..., 1].astype(int) - thumbnail[..., 0]
    assert green[coarse == 1].mean() > green[(coarse == 0) & tissue].mean() + 50


def test_written_png_places_the_densest_detail_beside_the_thumbnail(slide_and_truth, tmp_path):
    slide, mask_path, truth = slide_and_truth
    out = write_slide_overlay(slide.path, mask_path, tmp_path / "figure.png", side=400, detail=200)
    picture = np.asarray(Image.open(out))
    thumbnail_width = 2048 // 4 // 2  # level 1 (512 x 384) every 2nd pixel to fit 400: 256 x 192
    assert picture.shape == (200, thumbnail_width + GAP + 200, 3)
    detail = picture[:200, thumbnail_width + GAP:]
    assert (detail != BACKGROUND).any(axis=-1).all()  # the densest part of the mask lies inside tissue
    assert list(tmp_path.iterdir()) == [out]
    small = write_slide_overlay(slide.path, mask_path, tmp_path / "small.png", side=400, detail=200, colours=32)
    with Image.open(small) as image:
        assert image.mode == "P" and image.size == (thumbnail_width + GAP + 200, 200)
        assert len(image.getcolors()) <= 32
    with pytest.raises(ValueError, match="palette size"):
        write_slide_overlay(slide.path, mask_path, tmp_path / "bad.png", colours=1)


def test_mask_with_planes_is_refused(slide_and_truth, tmp_path):
    slide, _, _ = slide_and_truth
    tifffile.imwrite(tmp_path / "planes.ome.tif", np.zeros((2, 64, 64), np.uint8), ome=True, metadata={"axes": "CYX"})
    with pytest.raises(ValueError, match="one-plane uint8"):
        overlay_images(slide.path, tmp_path / "planes.ome.tif")
