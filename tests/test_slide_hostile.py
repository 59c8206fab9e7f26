"""Whole slides that are not what they should be (docs/slides.md): anisotropic pixels, corrupt tiles,
damaged resume state, non-RGB photometric interpretations, grey slides, repeated and BOM-led lists.

Small synthetic slides written with tifffile, the tiny model of tests/test_slide.py (1 um per model pixel).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("tiffslide")
pytest.importorskip("imagecodecs")

from test_slide import (MPP, island_slide, segmenter, slide_deploy, slides, tissue_image,  # noqa: E402,F401
                        write_slide)

from mrdl_runtime.slide_reader import SlideError, SlideReader  # noqa: E402


def _digests(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(".json")}


# ----------------------------------------------------------------------------- anisotropic pixels


def test_anisotropic_slide_gives_geojson_on_the_mask_within_the_slide(slides, tmp_path):
    """0.5 um/px rows, 0.25 um/px columns: the mask is 1 um/px both ways, so a mask pixel is 2 level-0
    rows by 4 level-0 columns, and every polygon lies inside the slide, on mask foreground."""
    shapely = pytest.importorskip("shapely.geometry")
    from mrdl_runtime.slide import SlideOptions

    height, width = 1024, 2048
    image = np.full((height, width, 3), 243, dtype=np.uint8)
    image[128:896, 256:1792] = tissue_image(768, 1536, seed=7)
    path = tmp_path / "aniso.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(image, tile=(128, 128), compression="zlib", photometric="rgb",
                     resolution=(1e4 / 0.25, 1e4 / 0.5), resolutionunit="CENTIMETER")
    out = tmp_path / "out"
    result = slides.predict_slide(path, out, SlideOptions(tissue_mask=False))
    assert result.mpp == (0.5, 0.25) and result.grid == (512, 512) and result.mask_mpp == (1.0, 1.0)
    mask = tifffile.imread(out / "aniso.mask.ome.tif")
    features = json.loads((out / "aniso.geojson").read_text())["features"]
    assert len(features) == result.objects > 0
    polygons = [shapely.shape(feature["geometry"]) for feature in features]
    bounds = np.array([polygon.bounds for polygon in polygons])  # minx, miny, maxx, maxy
    assert bounds[:, :2].min() >= 0 and bounds[:, 2].max() <= width and bounds[:, 3].max() <= height
    rows, columns = np.nonzero(mask)
    assert bounds[:, 0].min() == 4 * columns.min() and bounds[:, 2].max() == 4 * (columns.max() + 1)
    assert bounds[:, 1].min() == 2 * rows.min() and bounds[:, 3].max() == 2 * (rows.max() + 1)
    for polygon in polygons:
        point = polygon.representative_point()
        assert mask[int(point.y // 2), int(point.x // 4)] > 0
    assert "at 0.25x0.5 um/px" in result.line()


def test_plan_scales_each_axis_by_its_own_ratio(segmenter):
    """A 2999x2601 slide: the grid rounds differently per axis, so y has its own level-0 scale."""
    from mrdl_runtime.slide import plan_slide
    from mrdl_runtime.slide_reader import SlideLevel

    plan = plan_slide((SlideLevel(0, (2601, 2999), (MPP, MPP)),), segmenter.manifest, 0.25)
    assert plan.level0_per_mask_pixel == (2601 / plan.grid[0], 2999 / plan.grid[1])
    assert plan.grid[0] * plan.level0_per_mask_pixel[0] == pytest.approx(2601)


# ----------------------------------------------------------------------------- corrupt tiles


def corrupt_tile(path, *, y: int, x: int) -> None:
    """Overwrite the bytes of level 0's tile at pixel (y, x) with noise."""
    with tifffile.TiffFile(path) as opened:
        page = opened.pages[0]
        index = (y // page.tilelength) * -(-page.imagewidth // page.tilewidth) + x // page.tilewidth
        offset, count = page.dataoffsets[index], page.databytecounts[index]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.random.default_rng(0).integers(0, 256, count, dtype=np.uint8).tobytes())


def test_corrupt_tile_is_a_slide_error_naming_level_and_tile_and_leaves_no_partial(slides, tmp_path):
    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / "bad.tif"
    write_slide(path, tissue_image(512, 512), kind="tif", mpp=1.0, levels=1)
    corrupt_tile(path, y=384, x=128)
    out = tmp_path / "out"
    with pytest.raises(SlideError, match=r"cannot decode level 0, the tile at y=384 x=128") as caught:
        slides.predict_slide(path, out, SlideOptions(tissue_mask=False, geojson=False))
    assert caught.value.slide == path and str(path) not in caught.value.reason
    assert not (out / ".bad.partial").exists(), "a failed slide leaves no partial folder"


def test_cli_reports_bad_slides_on_one_line_and_goes_on(slide_deploy, tmp_path):
    """A corrupt tile, a palette slide and a non-slide each fail on one line naming the path once; the
    good slide, given twice and in a BOM-led CSV list, is segmented once."""
    from click.testing import CliRunner

    from mrdl_apps.cli import main

    folder = tmp_path / "slides"
    folder.mkdir()
    write_slide(folder / "bad.tif", tissue_image(512, 512), kind="tif", mpp=1.0, levels=1)
    corrupt_tile(folder / "bad.tif", y=384, x=128)
    tifffile.imwrite(folder / "palette.tif", np.zeros((256, 256), np.uint8), photometric="palette",
                     colormap=np.zeros((3, 256), np.uint16), tile=(128, 128))
    (folder / "junk.svs").write_bytes(b"not a slide")
    island_slide(tmp_path / "good.svs", size=(1024, 1024), island=(256, 768, 256, 768))
    (tmp_path / "list.csv").write_bytes("path\ngood.svs\n".encode("utf-8-sig"))
    inputs = [folder / "bad.tif", folder / "palette.tif", folder / "junk.svs", tmp_path / "good.svs",
              tmp_path / "list.csv"]
    result = CliRunner().invoke(main, ["predict-slide", str(slide_deploy), *map(str, inputs), "--out",
                                       str(tmp_path / "out"), "--no-progress", "--no-tissue-mask", "--no-geojson",
                                       "--mpp", "1.0"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "1 of 4 slides segmented" in result.output
    failed = [line for line in result.output.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 3 and all(line.count(str(folder)) == 1 for line in failed), failed
    assert "cannot decode level 0, the tile at y=384 x=128" in failed[0]
    assert "photometric interpretation PALETTE" in failed[1]
    assert [line for line in result.output.splitlines() if line.startswith("good.svs:")]
    assert not list((tmp_path / "out").glob(".*")), "no partial folder of a failed slide is left"


# ----------------------------------------------------------------------------- resume state


def test_state_is_saved_after_the_rows_are_on_disk(monkeypatch, tmp_path):
    """save() fsyncs the row files before it writes (and fsyncs) the state that counts them."""
    from mrdl_runtime.slide_state import Intermediate

    work = Intermediate(tmp_path / ".s.partial", (8, 4), planes=1)
    work.create()
    work.write_rows(0, np.ones((4, 4), np.uint8), np.ones((1, 4, 4), np.uint8))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    work.save("key", 1, (np.zeros((2, 3, 4), np.float32), np.zeros((3, 4), np.float32)))
    names = [os.path.basename(name) for name in synced]
    assert names[:2] == ["mask.u8", "prob-0.u8"] and len(names) == 4  # then the carry file, then state.json


def _truncate(path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "short mask": lambda folder: _truncate(folder / "mask.u8"),
    "short carry": lambda folder: _truncate(next(folder.glob("carry-*.npz"))),
    "no carry": lambda folder: next(folder.glob("carry-*.npz")).unlink(),
    "bad state": lambda folder: (folder / "state.json").write_text("{\"key\": "),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_with_a_damaged_state_starts_over_with_a_warning(slides, segmenter, tmp_path, caplog, damage):
    from mrdl_runtime.slide import SlideOptions, SlideSegmenter

    path = tmp_path / "island.svs"
    island_slide(path, size=(1024, 768), island=(128, 896, 128, 640))
    options = SlideOptions(tissue_mask=False)
    slides.predict_slide(path, tmp_path / "whole", options)
    calls = []

    def interrupted(windows):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(len(windows))
        return slides.run_windows(windows)

    stopping = SlideSegmenter(segmenter.manifest, interrupted)
    stopping.checkpoint_seconds = 0.0
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        stopping.predict_slide(path, out, options)
    folder = out / ".island.partial"
    assert json.loads((folder / "state.json").read_text())["bands_done"] > 0 and list(folder.glob("carry-*.npz"))
    DAMAGE[damage](folder)
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"):
        resumed = slides.predict_slide(path, out, options.with_fields(resume=True))
    assert resumed.resumed_bands == 0
    assert any("cannot resume" in record.message and "starting over" in record.message for record in caplog.records)
    assert _digests(out) == _digests(tmp_path / "whole")


# ----------------------------------------------------------------------------- pixels: photometric, dtype, grey


@pytest.mark.parametrize("photometric, expected", [("palette", "PALETTE"), ("separated", "SEPARATED"),
                                                   ("miniswhite", "MINISWHITE")])
def test_non_rgb_photometric_is_refused_when_opened(tmp_path, photometric, expected):
    path = tmp_path / "s.tif"
    samples = 4 if photometric == "separated" else 1
    data = np.zeros((256, 256, samples) if samples > 1 else (256, 256), np.uint8)
    extra = {"colormap": np.zeros((3, 256), np.uint16)} if photometric == "palette" else {}
    tifffile.imwrite(path, data, photometric=photometric, tile=(128, 128), **extra)
    with pytest.raises(SlideError, match=f"photometric interpretation {expected}"):
        SlideReader(path, mpp=0.25)


def test_16_bit_slide_is_refused_when_opened(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros((256, 256, 3), np.uint16), photometric="rgb", tile=(128, 128))
    with pytest.raises(SlideError, match="level 0 holds uint16 pixels; expected 8-bit RGB"):
        SlideReader(path, mpp=0.25)


def test_grey_slide_without_tissue_found_warns_to_turn_the_tissue_mask_off(slides, tmp_path, caplog):
    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / "grey.tif"
    grey = tissue_image(512, 512).mean(axis=2).astype(np.uint8)
    tifffile.imwrite(path, grey, photometric="minisblack", tile=(128, 128), resolution=(1e4, 1e4),
                     resolutionunit="CENTIMETER")
    with caplog.at_level(logging.WARNING, logger="mrdl_runtime"):
        result = slides.predict_slide(path, tmp_path / "out", SlideOptions(geojson=False))
    assert result.tissue_fraction == 0 and result.windows_run == 0
    assert len(result.warnings) == 1 and "--no-tissue-mask" in result.warnings[0]
    assert "--no-tissue-mask" in caplog.text
    assert json.loads((tmp_path / "out" / "grey.json").read_text())["warnings"] == result.warnings


# ----------------------------------------------------------------------------- slide lists


def test_slide_list_reads_a_bom_header_and_drops_repeats(tmp_path, monkeypatch):
    from mrdl_runtime.slide import slide_paths

    monkeypatch.chdir(tmp_path)
    for name in ("a.svs", "b.svs"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "list.csv").write_bytes("path\nb.svs\na.svs\n".encode("utf-8-sig"))
    found = slide_paths(["a.svs", "./a.svs", str(tmp_path / "a.svs"), "list.csv"])
    assert [p.resolve() for p in found] == [tmp_path / "a.svs", tmp_path / "b.svs"]


# ----------------------------------------------------------------------------- resolution metadata


def write_label_first(path, level0: np.ndarray, *, ome: bool, mpp: float = 0.5) -> None:
    """A small label image (10 um/px) as image 0, then the slide pyramid (4x levels, ``mpp``) as image 1,
    as some converters write an OME-TIFF or a generic multi-image TIFF."""
    label = np.full((100, 200, 3), 30, np.uint8)
    pyramid = [level0, np.ascontiguousarray(level0[::4, ::4]), np.ascontiguousarray(level0[::16, ::16])]

    def where(um: float) -> dict:
        if ome:
            return {"metadata": {"axes": "YXS", "PhysicalSizeX": um, "PhysicalSizeY": um}}
        return {"resolution": (1e4 / um, 1e4 / um), "resolutionunit": "CENTIMETER", "metadata": None}

    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as writer:
        writer.write(label, photometric="rgb", **where(10.0))
        writer.write(level0, subifds=2, tile=(128, 128), compression="zlib", photometric="rgb", **where(mpp))
        for level in pyramid[1:]:
            writer.write(level, subfiletype=1, tile=(128, 128), compression="zlib", photometric="rgb", metadata=None)


@pytest.mark.parametrize("ome", [True, False], ids=["ome", "tif"])
def test_label_image_first_reads_the_largest_image_with_its_own_levels_and_resolution(tmp_path, ome):
    image = tissue_image(512, 384)
    path = tmp_path / ("s.ome.tif" if ome else "s.tif")
    write_label_first(path, image, ome=ome)
    with SlideReader(path) as reader:
        assert [level.size for level in reader.levels] == [(512, 384), (128, 96), (32, 24)]
        assert [level.mpp for level in reader.levels] == [(0.5, 0.5), (2.0, 2.0), (8.0, 8.0)]
        assert reader.image == 1 and "image 1 of 2" in reader.mpp_source
        assert reader.mpp_source.startswith("OME PhysicalSize" if ome else "TIFF resolution tags")
        assert np.array_equal(reader.read(0, (100, 140), (50, 300)), image[100:140, 50:300])
        assert np.array_equal(reader.rows(2, 0, 32), image[::16, ::16])


def test_label_image_first_is_segmented_and_the_line_names_the_image(slides, tmp_path):
    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / "s.ome.tif"
    write_label_first(path, tissue_image(512, 512), ome=True, mpp=MPP)
    result = slides.predict_slide(path, tmp_path / "out", SlideOptions(tissue_mask=False, geojson=False))
    assert result.slide_size == (512, 512) and result.mpp == (MPP, MPP) and result.level.index == 1
    assert "image 1 of 2" in result.line()


@pytest.mark.parametrize("resolution, unit", [((1e4 / 0.5, 1e4 / 0.5), "CENTIMETER"), ((72, 72), "INCH")],
                         ids=["0.5um-tags", "72dpi-tags"])
def test_ome_physical_size_wins_over_the_tiff_resolution_tags(tmp_path, resolution, unit):
    path = tmp_path / "s.ome.tif"
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as writer:
        writer.write(tissue_image(256, 256), tile=(128, 128), photometric="rgb", resolution=resolution,
                     resolutionunit=unit, metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    with SlideReader(path) as reader:
        assert reader.levels[0].mpp == (0.25, 0.25) and reader.mpp_source == "OME PhysicalSize"


@pytest.mark.parametrize("ppi", [72, 96, 150, 300])
def test_desktop_default_resolution_tags_are_refused_naming_mpp(tmp_path, ppi):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, tissue_image(256, 256), tile=(128, 128), photometric="rgb", resolution=(ppi, ppi),
                     resolutionunit="INCH")
    with pytest.raises(SlideError, match=rf"{ppi} pixels per inch.*default.*--mpp") as caught:
        SlideReader(path)
    assert caught.value.slide == path and "\n" not in str(caught.value)
    with SlideReader(path, mpp=0.5) as reader:
        assert reader.levels[0].mpp == (0.5, 0.5) and reader.mpp_source == "--mpp"


def test_desktop_default_in_pixels_per_centimetre_is_refused(tmp_path):
    """72 dpi written as 28.3465 pixels per centimetre (how some editors store it) is the same default."""
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, tissue_image(256, 256), tile=(128, 128), photometric="rgb",
                     resolution=(28.3465, 28.3465), resolutionunit="CENTIMETER")
    with pytest.raises(SlideError, match=r"72 pixels per inch.*default.*--mpp"):
        SlideReader(path)


def test_resolution_finer_than_a_microscope_resolves_is_refused_naming_the_unit(tmp_path):
    path = tmp_path / "s.svs"
    write_slide(path, tissue_image(256, 256), mpp=1e-9, levels=1)
    with pytest.raises(SlideError, match=r"1e-09 um/px \(Aperio MPP\).*finer than.*unit") as caught:
        SlideReader(path)
    assert caught.value.slide == path
    ok = tmp_path / "ok.svs"
    write_slide(ok, tissue_image(256, 256), levels=1)
    with pytest.raises(SlideError, match=r"--mpp 1e-06 .*finer than.*unit"):
        SlideReader(ok, mpp=0.000001)


def test_resolution_finer_than_a_microscope_fails_the_slide_instead_of_a_1x1_mask(slides, tmp_path):
    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / "s.svs"
    write_slide(path, tissue_image(256, 256), mpp=1e-9, levels=1)
    with pytest.raises(SlideError, match="finer than"):
        slides.predict_slide(path, tmp_path / "out", SlideOptions(tissue_mask=False, geojson=False))


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-0.25", "0,25"])
def test_invalid_aperio_mpp_is_named_as_invalid_not_as_missing(tmp_path, value):
    path = tmp_path / "s.svs"
    write_slide(path, tissue_image(256, 256), mpp=value, levels=1)
    with pytest.raises(SlideError, match=rf"Aperio MPP = {value}.* not a valid .*--mpp") as caught:
        SlideReader(path)
    assert "records no resolution" not in str(caught.value)


@pytest.mark.parametrize("value", ["nan", "0", "-1"])
def test_invalid_ome_physical_size_is_named_as_invalid(tmp_path, value):
    path = tmp_path / "s.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(tissue_image(256, 256), tile=(128, 128), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": value, "PhysicalSizeY": value})
    with pytest.raises(SlideError, match=rf"OME PhysicalSizeY = {value}.* not a valid .*--mpp"):
        SlideReader(path)


def test_ome_resolution_is_that_of_the_image_of_the_size_read():
    """tifffile skips an OME Image it cannot map, so series numbers can run ahead of Image numbers: the
    Image whose size is the one read gives the resolution, not the one at the series' index."""
    from mrdl_runtime.slide_resolution import ome_mpp

    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels SizeX="200" SizeY="100" PhysicalSizeX="10" PhysicalSizeY="10"/></Image>'
           '<Image ID="Image:1"><Pixels SizeX="384" SizeY="512" PhysicalSizeX="0.5" PhysicalSizeY="0.25"/></Image>'
           '</OME>')
    assert ome_mpp(xml, 1) == (0.25, 0.5) and ome_mpp(xml, 0) == (10.0, 10.0)
    assert ome_mpp(xml, 0, (512, 384)) == (0.25, 0.5)
    assert ome_mpp(xml, 1, (7, 7)) is None


def test_ome_units_greek_mu_reads_as_microns_and_an_unknown_unit_is_named():
    from mrdl_runtime.slide_resolution import ome_mpp

    def xml(unit: str) -> str:
        return ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
                f'<Pixels SizeX="8" SizeY="8" PhysicalSizeX="0.25" PhysicalSizeXUnit="{unit}" PhysicalSizeY="0.5" '
                f'PhysicalSizeYUnit="{unit}"/></Image></OME>')

    assert ome_mpp(xml("\u03bcm")) == ome_mpp(xml("\u00b5m")) == (0.5, 0.25)  # Greek mu, micro sign
    assert ome_mpp(xml("nm")) == (0.5e-3, 0.25e-3)
    with pytest.raises(SlideError, match=r"PhysicalSizeYUnit = 'furlong', not a length unit .*--mpp"):
        ome_mpp(xml("furlong"))
