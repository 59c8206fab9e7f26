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
    for _ in range(max(4, height * width // 2500)):
        cy, cx, r = rng.integers(0, height), rng.integers(0, width), int(rng.integers(4, 12))
        y0, x0 = max(cy - r, 0), max(cx - r, 0)
        yy, xx = np.mgrid[y0:min(cy + r, height), x0:min(cx + r, width)]
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        image[y0:y0 + blob.shape[0], x0:x0 + blob.shape[1]][blob] = rng.integers((80, 30, 120), (140, 80, 180))
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


# ----------------------------------------------------------------------------- tissue, reads, outputs, resume


def island_slide(path, *, size=(2048, 2048), island=(512, 1024, 768, 1280), kind="svs") -> None:
    """A white slide with one rectangle of tissue, rows [island[0], island[1]) columns [island[2], island[3])."""
    image = np.full((*size, 3), 243, dtype=np.uint8)
    r0, r1, c0, c1 = island
    image[r0:r1, c0:c1] = tissue_image(r1 - r0, c1 - c0, seed=5)
    write_slide(path, image, kind=kind)


def test_tissue_mask_skips_background_windows(slides, segmenter, tmp_path):
    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / "island.svs"
    island = (512, 1024, 768, 1280)  # level 0; the grid is level 1 (1 um/px): rows 128-256, columns 192-320
    island_slide(path, island=island)
    full = slides.predict_slide(path, tmp_path / "all", SlideOptions(tissue_mask=False, geojson=False))
    skipped = slides.predict_slide(path, tmp_path / "tissue", SlideOptions(geojson=False))
    assert full.windows_run == full.windows == skipped.windows and full.tissue_fraction is None
    assert skipped.tissue_fraction == pytest.approx(0.0625, abs=0.01)  # 512 x 512 of 2048 x 2048
    (mh, mw), grid = segmenter.manifest.size, skipped.grid
    from mrdl_runtime.slide import plan_slide

    plan = plan_slide(tuple(SlideReader(path).levels), segmenter.manifest, 0.25)
    g0, g1, g2, g3 = (v // 4 for v in island)
    margin = 2 * 4 * 512 // 128 // 4  # one dilation pixel of the 128-pixel-wide thumbnail, in grid pixels, twice
    touching = sum(1 for y in plan.rows for x in plan.columns if y < g1 and y + mh > g0 and x < g3 and x + mw > g2)
    near = sum(1 for y in plan.rows for x in plan.columns
               if y < g1 + margin and y + mh > g0 - margin and x < g3 + margin and x + mw > g2 - margin)
    assert touching <= skipped.windows_run <= near < full.windows
    inside = (slice(g0 + mh, g1 - mh), slice(g2 + mw, g3 - mw))  # tissue pixels whose windows all ran
    assert np.array_equal(_mask(tmp_path / "tissue", "island")[inside], _mask(tmp_path / "all", "island")[inside])
    assert not _mask(tmp_path / "tissue", "island")[:g0 - margin - mh].any()  # background: nothing run, nothing found
    assert grid == (512, 512)


def test_reads_are_bounded_by_a_band(slides, monkeypatch, tmp_path):
    """No region read decodes more than a band of the level (the band's rows plus a tile row either side)."""
    import mrdl_runtime.slide as slide_module
    from mrdl_runtime.slide import SlideOptions

    readers = []

    class CountingReader(SlideReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            readers.append(self)

    monkeypatch.setattr(slide_module, "SlideReader", CountingReader)
    path = tmp_path / "tall.ome.tif"
    write_slide(path, tissue_image(2048, 512, seed=2), kind="ome", mpp=1.0, levels=2, tile=128)
    result = slides.predict_slide(path, tmp_path / "out", SlideOptions(tissue_mask=False, geojson=False))
    assert result.level.index == 0 and result.grid == (2048, 512)
    band_rows = 64 + 2 * 128  # the window height plus a tile row either side
    assert readers[0].largest_read <= band_rows * 512 < 2048 * 512 // 5


def test_outputs_open_in_tifffile_and_tiffslide_with_the_mask_resolution(slides, tmp_path):
    import tiffslide

    from mrdl_runtime.slide import SlideOptions

    path = tmp_path / "island.svs"
    island_slide(path, size=(4096, 3072), island=(1024, 3072, 512, 2560))
    out = tmp_path / "out"
    result = slides.predict_slide(path, out, SlideOptions(probabilities=True, gzip=True))
    assert set(result.outputs) == {"mask", "probabilities", "geojson"}
    with tifffile.TiffFile(out / "island.mask.ome.tif") as mask_file:
        series = mask_file.series[0]
        assert series.kind == "ome" and series.shape == result.grid == (1024, 768)
        assert [level.shape for level in series.levels] == [(1024, 768), (256, 192)]
        assert mask_file.pages[0].is_tiled and mask_file.pages[0].compression == 8  # deflate
        mask = series.asarray()
    with tiffslide.TiffSlide(out / "island.mask.ome.tif") as opened:
        assert float(opened.properties["tiffslide.mpp-x"]) == pytest.approx(1.0)
    probabilities = tifffile.imread(out / "island.probabilities.ome.tif")
    assert probabilities.shape == result.grid
    assert np.mean((probabilities > 127) == (mask > 0)) > 0.999  # p > 0.5 vs rint(255 p) > 127: equal but at p ~ 0.5
    record = json.loads((out / "island.json").read_text())
    assert record["mask_mpp"] == [1.0, 1.0] and record["level"] == 1 and record["windows_run"] == result.windows_run
    import gzip

    features = json.loads(gzip.decompress((out / "island.geojson.gz").read_bytes()))["features"]
    assert len(features) == result.objects > 0
    shapely = pytest.importorskip("shapely.geometry")
    polygons = [shapely.shape(feature["geometry"]) for feature in features]
    assert all(polygon.is_valid for polygon in polygons)
    assert all(feature["properties"]["objectType"] == "detection" for feature in features)
    # level-0 coordinates: the objects' extent is the mask's foreground extent (pixel corners) times 4
    bounds = np.array([polygon.bounds for polygon in polygons])  # minx, miny, maxx, maxy
    rows, columns = np.nonzero(mask)
    assert bounds[:, 0].min() == 4 * columns.min() and bounds[:, 2].max() == 4 * (columns.max() + 1)
    assert bounds[:, 1].min() == 4 * rows.min() and bounds[:, 3].max() == 4 * (rows.max() + 1)
    assert not list(out.glob(".*")), "no temporary or partial files are left"


def _digests(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(".json")}


def test_resume_after_an_interruption_gives_the_same_bytes(slides, segmenter, tmp_path):
    from mrdl_runtime.slide import SlideOptions, SlideSegmenter

    path = tmp_path / "island.svs"
    island_slide(path, size=(2048, 1536), island=(256, 1792, 256, 1280))
    options = SlideOptions(probabilities=True)
    whole = slides.predict_slide(path, tmp_path / "whole", options)
    calls = []

    def interrupted(windows):
        if len(calls) == 6:
            raise KeyboardInterrupt
        calls.append(len(windows))
        return slides.run_windows(windows)

    out = tmp_path / "resumed"
    stopping = SlideSegmenter(segmenter.manifest, interrupted)
    stopping.checkpoint_seconds = 0.0  # save after every band
    with pytest.raises(KeyboardInterrupt):
        stopping.predict_slide(path, out, options)
    assert not (out / "island.mask.ome.tif").exists() and (out / ".island.partial" / "state.json").is_file()
    counted = []

    def counting(windows):
        counted.append(len(windows))
        return slides.run_windows(windows)

    resumed = SlideSegmenter(segmenter.manifest, counting).predict_slide(path, out, options.with_fields(resume=True))
    assert resumed.resumed_bands > 0 and sum(counted) < whole.windows_run
    assert _digests(out) == _digests(tmp_path / "whole")
    # without --resume the partial state is not used: a fresh run, same bytes again
    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        stopping.predict_slide(path, again, options)
    fresh = slides.predict_slide(path, again, options)
    assert fresh.resumed_bands == 0 and _digests(again) == _digests(tmp_path / "whole")


def test_server_window_path_equals_in_process(slides, segmenter, tmp_path):
    """--server sends model-size windows as whole images (tile off): the server's answer is the model's output."""
    from mrdl_runtime.slide import SlideOptions, SlideSegmenter

    class FakeRemote:  # RemoteSegmenter's predict_batch contract, answered by the in-process whole-image path
        max_batch = 3

        def predict_batch(self, images, **kwargs):
            assert kwargs == {"tile": False, "with_probabilities": True}
            return segmenter.predict_batch(images, tile=False, with_probabilities=True)

    path = tmp_path / "island.svs"
    island_slide(path)
    served = SlideSegmenter.remote(FakeRemote(), segmenter.manifest)
    assert served.batch == 3 * SlideSegmenter.requests_in_flight
    served.predict_slide(path, tmp_path / "served", SlideOptions(geojson=False))
    slides.predict_slide(path, tmp_path / "local", SlideOptions(geojson=False))
    assert np.array_equal(_mask(tmp_path / "served", "island"), _mask(tmp_path / "local", "island"))


@pytest.fixture(scope="module")
def slide_deploy(tiny_export, tmp_path_factory):
    """The calibrated tiny model exported with --source-size 256x256 --source-mpp 0.25 (1 um per model pixel)."""
    from mrdl_export import export_model

    out = tmp_path_factory.mktemp("slide-deploy") / "deploy"
    export_model(tiny_export[0], out, max_batch=4, parity_images=1, source_size="256x256", source_mpp="0.25")
    return out


def test_export_writes_source_mpp_to_model_json(slide_deploy):
    from mrdl_runtime import load_manifest

    manifest = load_manifest(slide_deploy)
    assert manifest.source_mpp == MPP and manifest.source_size == (256, 256)
    assert json.loads((slide_deploy / "model.json").read_text())["format"] == "mrdl-deploy/2"


def test_cli_segments_each_slide_and_reports_the_failures(slide_deploy, model_dir, tmp_path):
    from click.testing import CliRunner

    from mrdl_apps.cli import main

    deploy = slide_deploy
    slides_dir = tmp_path / "slides"
    slides_dir.mkdir()
    island_slide(slides_dir / "a.svs")
    island_slide(slides_dir / "b.ome.tif", kind="ome")
    write_slide(slides_dir / "c.tif", tissue_image(256, 256), kind="tif", mpp=None)  # no resolution
    (slides_dir / "d.svs").write_bytes(b"not a slide")
    (tmp_path / "list.csv").write_text("path\nslides/a.svs\n")
    result = CliRunner().invoke(main, ["predict-slide", str(deploy), str(slides_dir), "--out", str(tmp_path / "out"),
                                       "--no-progress", "--no-geojson"])
    assert result.exit_code == 1, result.output
    assert "2 of 4 slides segmented" in result.output
    assert "c.tif" in result.output and "--mpp" in result.output and "not a readable slide" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("a.svs:", "b.ome.tif:"))]
    assert len(lines) == 2 and all("tissue" in line and "windows" in line and "level 1" in line for line in lines)
    assert (tmp_path / "out" / "a.mask.ome.tif").is_file() and (tmp_path / "out" / "b.mask.ome.tif").is_file()
    listed = CliRunner().invoke(main, ["predict-slide", str(deploy), str(tmp_path / "list.csv"), "--out",
                                       str(tmp_path / "out2"), "--no-progress", "--mpp", "0.25"])
    assert listed.exit_code == 0, listed.output
    assert "(--mpp)" in listed.output and (tmp_path / "out2" / "a.geojson").is_file()
    refused = CliRunner().invoke(main, ["predict-slide", str(model_dir), str(slides_dir / "a.svs"), "--out",
                                        str(tmp_path / "out3"), "--no-progress"])
    assert refused.exit_code == 1 and "mrdl-export --source-mpp" in refused.output


# ----------------------------------------------------------------------------- real data


def _dice(mask: np.ndarray, truth: np.ndarray) -> float:
    total = mask.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(mask, truth).sum() / total)


def test_monuseg_crop_gives_the_dice_of_predict(monuseg_root, segmenter, slides, tmp_path):
    """A 1000x1000 MoNuSeg crop as a slide at 0.25 um/px, the model trained on 1000x1000 at 0.25 um/px:
    the mask equals the tiled runtime's bit for bit, and its Dice against the ground truth equals
    ``Segmenter.predict``'s (the whole-image path of ``mrdl predict``, at the model size: LViT's
    protocol) up to the pixels where Pillow's one-pass resize and the separable passes differ by one
    grey level (tolerance 0.01 Dice; the masks agree on >= 99 % of pixels)."""
    from PIL import Image

    from mrdl_runtime.slide import SlideOptions

    name = sorted((monuseg_root / "Val_Folder" / "img").iterdir())[0]
    image = np.asarray(Image.open(name).convert("RGB"))[:1000, :1000]
    truth = np.asarray(Image.open(monuseg_root / "Val_Folder" / "labelcol" / name.name).convert("L"))[:1000, :1000]
    path = tmp_path / "crop.ome.tif"
    write_slide(path, image, kind="ome", levels=1)  # lossless: the slide holds the crop's pixels
    original = segmenter.manifest
    try:
        segmenter.manifest = dataclasses.replace(original, source_size=(1000, 1000), source_mpp=MPP)
        result = slides.__class__.in_process(segmenter).predict_slide(
            path, tmp_path / "out", SlideOptions(tissue_mask=False, geojson=False))
        tiled = segmenter.predict(image, tile=True, at_model_size=True, with_probabilities=False).mask
        whole = segmenter.predict(image, at_model_size=True, with_probabilities=False).mask
    finally:
        segmenter.manifest = original
    mask = _mask(tmp_path / "out", "crop")
    assert result.grid == mask.shape == whole.shape == original.size
    assert np.array_equal(mask, tiled)
    small_truth = np.asarray(Image.fromarray(truth).resize(original.size[::-1], Image.NEAREST)) > 127
    assert np.mean(mask == whole) >= 0.99
    assert abs(_dice(mask > 0, small_truth) - _dice(whole > 0, small_truth)) <= 0.01


def test_predict_slide_on_a_triton_server_equals_in_process(slide_deploy, tmp_path):
    """--server: a real mrdl serve (PyTriton) answers the windows; the mask is the in-process one."""
    pytest.importorskip("pytriton", reason="the serve extra is missing: pip install 'mrdl[serve]'")
    from click.testing import CliRunner

    from mrdl_apps.cli import main
    from mrdl_runtime.server_process import ServerProcess
    from mrdl_runtime.serving import ServeOptions, hosting_problem

    problem = hosting_problem()
    if problem is not None:
        pytest.skip(f"this Python cannot host PyTriton: {problem}")
    path = tmp_path / "island.svs"
    island_slide(path)
    server = ServerProcess(slide_deploy, ServeOptions(), log=tmp_path / "serve.log")
    server.start(120)
    try:
        served = CliRunner().invoke(main, ["predict-slide", str(slide_deploy), str(path), "--out", str(tmp_path / "s"),
                                           "--server", f"http://127.0.0.1:{server.http_port}", "--no-progress"])
    finally:
        assert server.stop() == 0, server.output()
    assert served.exit_code == 0, served.output
    local = CliRunner().invoke(main, ["predict-slide", str(slide_deploy), str(path), "--out", str(tmp_path / "l"),
                                      "--no-progress"])
    assert local.exit_code == 0, local.output
    assert np.array_equal(_mask(tmp_path / "s", "island"), _mask(tmp_path / "l", "island"))
    assert (tmp_path / "s" / "island.geojson").read_bytes() == (tmp_path / "l" / "island.geojson").read_bytes()
