"""Whole slides and inputs that are not what they should be, round 2 (docs/slides.md): channel-planar
images, two runs writing one slide, leftovers of a killed run, unusable OME resolutions, slide lists and
folders that name no slide, an output folder that cannot be written.

Small synthetic slides written with tifffile, the tiny model of tests/test_slide.py (1 um per model pixel).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("tiffslide")
pytest.importorskip("imagecodecs")

from test_slide import MPP, segmenter, slides, tissue_image, write_slide  # noqa: E402,F401

from mrdl_runtime.slide_reader import SlideError, SlideReader  # noqa: E402

OME_MPP = {"PhysicalSizeX": MPP, "PhysicalSizeY": MPP, "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}


def _options(**fields):
    from mrdl_runtime.slide import SlideOptions

    return SlideOptions(**{"tissue_mask": False, "geojson": False, **fields})


# ----------------------------------------------------------------------------- channel-planar images


def write_channel_planes(path, planes: np.ndarray, *, levels: int = 2) -> None:
    """An OME-TIFF of (C, H, W) uint8 grey planes (axes CYX, as Bio-Formats writes channels), 4x levels in SubIFDs."""
    pyramid = [planes] + [np.ascontiguousarray(planes[:, ::4 ** n, ::4 ** n]) for n in range(1, levels)]
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as writer:
        writer.write(planes, tile=(128, 128), photometric="minisblack", compression="zlib", subifds=levels - 1,
                     metadata={"axes": "CYX", **OME_MPP})
        for level in pyramid[1:]:
            writer.write(level, tile=(128, 128), photometric="minisblack", compression="zlib", subfiletype=1)


def test_three_channel_planes_are_read_as_rgb_at_their_own_size_and_resolution(tmp_path):
    image = tissue_image(512, 384, seed=4)
    path = tmp_path / "cyx.ome.tif"
    write_channel_planes(path, np.moveaxis(image, -1, 0))
    with SlideReader(path) as reader:
        assert reader.axes == "CYX"
        assert [level.size for level in reader.levels] == [(512, 384), (128, 96)]
        assert reader.levels[0].mpp == (MPP, MPP) and reader.mpp_source == "OME PhysicalSize"
        assert np.array_equal(reader.read(0, (100, 300), (40, 380)), image[100:300, 40:380])
        assert np.array_equal(reader.rows(1, 0, 128), image[::4, ::4])


def test_channel_planes_segment_as_the_same_interleaved_slide(slides, tmp_path):
    image = tissue_image(512, 512, seed=5)
    write_channel_planes(tmp_path / "planes.ome.tif", np.moveaxis(image, -1, 0), levels=1)
    write_slide(tmp_path / "pixels.ome.tif", image, kind="ome", levels=1)
    planes = slides.predict_slide(tmp_path / "planes.ome.tif", tmp_path / "out", _options())
    pixels = slides.predict_slide(tmp_path / "pixels.ome.tif", tmp_path / "out", _options())
    assert planes.slide_size == pixels.slide_size == (512, 512) and planes.grid == pixels.grid == (128, 128)
    assert np.array_equal(tifffile.imread(tmp_path / "out" / "planes.mask.ome.tif"),
                          tifffile.imread(tmp_path / "out" / "pixels.mask.ome.tif"))


@pytest.mark.parametrize("channels", [2, 4])
def test_other_channel_counts_are_refused_when_opened(tmp_path, channels):
    planes = np.moveaxis(tissue_image(256, 256), -1, 0)
    path = tmp_path / "fluorescence.ome.tif"
    write_channel_planes(path, np.concatenate([planes, planes])[:channels], levels=1)
    for mpp in (None, MPP):  # with --mpp too: the channel count must not be read as the width
        with pytest.raises(SlideError, match=rf"holds {channels} channel planes \(axes CYX\).*expected an RGB"):
            SlideReader(path, mpp=mpp)


def write_label_then_planar(path, image: np.ndarray) -> None:
    """A 300x300 interleaved label image, then the slide stored planar-separate (tifffile axes SYX)."""
    with tifffile.TiffWriter(path) as writer:
        writer.write(np.full((300, 300, 3), 40, np.uint8), photometric="rgb", resolution=(1e4 / 10, 1e4 / 10),
                     resolutionunit="CENTIMETER")
        writer.write(np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate", tile=(128, 128),
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")


def test_planar_slide_after_a_label_image_is_the_image_read(tmp_path):
    image = tissue_image(640, 512, seed=6)
    path = tmp_path / "label_planar.tif"
    write_label_then_planar(path, image)
    with SlideReader(path) as reader:
        assert reader.image == 1 and reader.axes == "SYX" and "image 1 of 2" in reader.mpp_source
        assert reader.levels[0].size == (640, 512) and reader.levels[0].mpp == (MPP, MPP)
        assert np.array_equal(reader.read(0, (0, 640), (0, 512)), image)


def test_planar_slide_alone_is_read(tmp_path):
    """tiffslide itself refuses a file whose first image is SYX ("not supported yet"): read here instead."""
    image = tissue_image(384, 256, seed=8)
    path = tmp_path / "planar.tif"
    tifffile.imwrite(path, np.moveaxis(image, -1, 0), photometric="rgb", planarconfig="separate", tile=(128, 128),
                     resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER")
    with SlideReader(path) as reader:
        assert reader.levels[0].size == (384, 256)
        assert np.array_equal(reader.read(0, (50, 300), (10, 250)), image[50:300, 10:250])


def test_largest_image_that_cannot_be_read_is_refused_not_replaced_by_the_label(tmp_path):
    path = tmp_path / "label_stack.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(np.full((100, 100, 3), 40, np.uint8), photometric="rgb")
        writer.write(np.zeros((2, 512, 512, 3), np.uint8), photometric="rgb", tile=(128, 128))
    with pytest.raises(SlideError, match=r"axes QYXS .* not one 2-D picture"):
        SlideReader(path, mpp=MPP)


# ----------------------------------------------------------------------------- OME resolution not usable


def test_ome_physical_size_on_one_axis_is_named(tmp_path):
    path = tmp_path / "x_only.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(tissue_image(256, 256), tile=(128, 128), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": MPP})
    with pytest.raises(SlideError, match=r"OME PhysicalSizeX = 0.25 but no PhysicalSizeY.*--mpp") as caught:
        SlideReader(path)
    assert "records no resolution" not in str(caught.value)


def test_ome_size_that_differs_from_the_pixels_is_named(tmp_path):
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="2048" SizeY="1024" '
           'SizeC="3" SizeZ="1" SizeT="1" PhysicalSizeX="0.25" PhysicalSizeY="0.25"><Channel ID="Channel:0:0" '
           'SamplesPerPixel="3"/><TiffData IFD="0" PlaneCount="1"/></Pixels></Image></OME>')
    path = tmp_path / "size_lie.ome.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(tissue_image(256, 384), tile=(128, 128), photometric="rgb", description=xml, metadata=None)
    with pytest.raises(SlideError, match=r"declares 2048x1024 pixels .* holds 384x256.*--mpp"):
        SlideReader(path)


# ----------------------------------------------------------------------------- one run per slide and folder


def test_a_second_run_on_the_same_slide_and_out_fails_at_once_and_leaves_the_first_alone(slides, tmp_path):
    from mrdl_runtime.slide_state import writing_lock

    path = tmp_path / "s.ome.tif"
    write_slide(path, tissue_image(256, 256), kind="ome", levels=1)
    out = tmp_path / "out"
    (out / ".s.partial").mkdir(parents=True)
    (out / ".s.partial" / "mask.u8").write_bytes(b"the first run's rows")
    with writing_lock(out, "s"):  # the first run (flock conflicts between open files, in one process too)
        with pytest.raises(SlideError, match=rf"another mrdl predict-slide is writing s in {out}"):
            slides.predict_slide(path, out, _options())
        assert (out / ".s.partial" / "mask.u8").read_bytes() == b"the first run's rows"
    assert not (out / ".s.lock").exists(), "the lock file goes with the lock"
    (out / ".s.lock").write_bytes(b"")  # a killed run's lock file: no lock is held on it
    assert slides.predict_slide(path, out, _options()).grid == (64, 64)
    assert sorted(p.name for p in out.iterdir()) == ["s.json", "s.mask.ome.tif"]


def test_outputs_are_written_through_temporaries_in_the_partial_folder(slides, tmp_path, monkeypatch):
    """What a killed output phase leaves (temporary names) lies in the slide's own partial folder, which
    the next run removes (or, resuming, clears of temporaries): never loose in --out."""
    import mrdl_runtime.atomic as atomic

    made = []
    create = atomic._create_temporary

    def recording(folder, mode):
        made.append(folder)
        return create(folder, mode)

    monkeypatch.setattr(atomic, "_create_temporary", recording)
    path = tmp_path / "s.ome.tif"
    write_slide(path, tissue_image(256, 256), kind="ome", levels=1)
    out = tmp_path / "out"
    slides.predict_slide(path, out, _options(geojson=True, probabilities=True))
    assert made and all(folder == out / ".s.partial" for folder in made), made


@pytest.mark.parametrize("resume", [False, True])
def test_a_killed_runs_temporaries_are_removed_by_the_next_run(slides, tmp_path, resume):
    from mrdl_runtime.slide import SlideSegmenter

    path = tmp_path / "s.ome.tif"
    write_slide(path, tissue_image(512, 256), kind="ome", levels=1)
    out = tmp_path / "out"
    interrupted = SlideSegmenter(slides.manifest, slides.run_windows)
    interrupted.checkpoint_seconds = 0.0
    original = interrupted._write_outputs

    def killed(work, *args):  # the output phase started (a temporary made), then the process died
        (work.folder / ".0123abcd.tmp").write_bytes(b"half a mask")
        raise KeyboardInterrupt

    interrupted._write_outputs = killed
    with pytest.raises(KeyboardInterrupt):
        interrupted.predict_slide(path, out, _options())
    interrupted._write_outputs = original
    assert (out / ".s.partial" / ".0123abcd.tmp").exists()
    slides.predict_slide(path, out, _options(resume=resume))
    assert sorted(p.name for p in out.iterdir()) == ["s.json", "s.mask.ome.tif"]


def test_gzip_geojson_names_no_temporary_file_so_reruns_give_the_same_bytes(slides, tmp_path):
    path = tmp_path / "s.ome.tif"
    write_slide(path, tissue_image(256, 256), kind="ome", levels=1)
    digests = []
    for out in (tmp_path / "a", tmp_path / "b"):
        slides.predict_slide(path, out, _options(geojson=True, gzip=True))
        digests.append(hashlib.sha256((out / "s.geojson.gz").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_out_that_cannot_be_written_is_one_clear_error(tmp_path):
    from mrdl_runtime.slide import prepare_out_dir

    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SlideError, match=r"cannot write to --out .*file/out .*choose a folder"):
        prepare_out_dir(tmp_path / "file" / "out")
    assert prepare_out_dir(tmp_path / "new" / "out").is_dir()
    assert not list((tmp_path / "new" / "out").iterdir()), "the write test leaves nothing"


# ----------------------------------------------------------------------------- slide lists and folders


def _list(tmp_path, content: bytes):
    from mrdl_runtime.slide import slide_paths

    (tmp_path / "my slide ü.svs").write_bytes(b"")
    (tmp_path / "list.csv").write_bytes(content)
    return slide_paths([str(tmp_path / "list.csv")])


@pytest.mark.parametrize("content", ["Path\nmy slide ü.svs\n", "slide_id,FileName\nA,my slide ü.svs\n",
                                     "path\n# a comment\n\n  # indented comment\nmy slide ü.svs\n",
                                     "my slide ü.svs\n"],
                         ids=["capital", "filename-column", "comments", "no-header"])
def test_slide_list_header_any_case_or_synonym_and_comment_lines(tmp_path, content):
    assert _list(tmp_path, content.encode()) == [tmp_path / "my slide ü.svs"]


def test_slide_list_short_row_names_the_file_and_line(tmp_path):
    with pytest.raises(SlideError, match=r"list.csv line 3: no 'path' value \(the row has 1 column"):
        _list(tmp_path, "id,path\n1,my slide ü.svs\n2\n".encode())


@pytest.mark.parametrize("content, found", [("path\nmy slide ü.svs\n".encode("cp1252"), "not UTF-8"),
                                            ("path\nmy slide ü.svs\n".encode("utf-16"), "UTF-16")],
                         ids=["cp1252", "utf-16"])
def test_slide_list_not_utf8_says_which_encoding_is_expected(tmp_path, content, found):
    with pytest.raises(SlideError, match=rf"list.csv line \d: the list is {found} text .*expected UTF-8"):
        _list(tmp_path, content)


def test_slide_list_without_slides_is_an_error(tmp_path):
    with pytest.raises(SlideError, match="names no slides"):
        _list(tmp_path, b"path\n# nothing yet\n")


def test_folder_without_slides_names_the_suffixes_and_what_it_holds(tmp_path):
    from mrdl_runtime.slide import slide_paths

    for name in ("a.ndpi", "b.ndpi", "c.qptiff", "s.mask.ome.tif"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    with pytest.raises(SlideError, match=r"no slides \(.svs, .tif.*\) in .*: it holds 2 .ndpi files, 1 .mask.ome.tif "
                                         r"file, 1 .qptiff file, 1 folder \(not searched\)"):
        slide_paths([str(tmp_path)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SlideError, match="it is empty"):
        slide_paths([str(tmp_path / "empty")])
