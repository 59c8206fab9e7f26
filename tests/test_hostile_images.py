"""Hostile and unusual images, and `mrdl predict` batches that must finish (issue 10, items 4, 5 and 7).

One decoding rule for every path: a 16-bit PNG made as v * 257 and float TIFFs of v / 255 and of
v give exactly the 8-bit image's model input and masks; NaN, negative, out-of-range and badly
shaped images are refused naming the problem; an image over the pixel limit is refused from its
header. `mrdl predict` skips (or stops at) bad files and names them, holds its --out exclusively,
never mixes two models' masks, and exits 130 on a real SIGINT.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image


@pytest.fixture(scope="session")
def gray8() -> np.ndarray:
    """A synthetic 8-bit gray image with structure (the tiny model segments part of it)."""
    from mrdl.data.synthetic import synthetic_sample

    return synthetic_sample(3, size=72, seed=0)[0][:, :61, 1].copy()  # (72, 61) uint8


def _run(*args: str):
    from mrdl_apps.cli import main

    return CliRunner().invoke(main, ["predict", *args], catch_exceptions=False)


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A tiny valid 8-bit gray PNG whose header is rewritten to claim width x height pixels."""
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    struct.pack_into(">II", data, 16, width, height)  # IHDR data starts at byte 16
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


# --- one decoding rule: 16-bit and float files give the 8-bit image's input and masks ---------------------------

@pytest.mark.parametrize("variant", ["uint16_png", "float_unit_tiff", "float_255_tiff"])
def test_16bit_and_float_files_equal_the_8bit_image(model_dir, gray8, tmp_path, variant):
    from mrdl.data.preprocess import preprocess as training_preprocess
    from mrdl.data.preprocess import read_rgb
    from mrdl_runtime import Segmenter
    from mrdl_runtime.imaging import preprocess, read_image

    Image.fromarray(gray8).save(tmp_path / "eight.png")
    path = tmp_path / {"uint16_png": "wide.png", "float_unit_tiff": "unit.tif", "float_255_tiff": "wide.tif"}[variant]
    values = {"uint16_png": gray8.astype(np.uint16) * 257, "float_unit_tiff": gray8.astype(np.float32) / 255,
              "float_255_tiff": gray8.astype(np.float32)}[variant]
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == {"uint16_png": "I;16", "float_unit_tiff": "F", "float_255_tiff": "F"}[variant]

    eight, other = read_image(tmp_path / "eight.png"), read_image(path)
    np.testing.assert_array_equal(other, eight)
    np.testing.assert_array_equal(read_rgb(path), eight)  # training reads with the same function
    np.testing.assert_array_equal(training_preprocess(read_rgb(path), 64), preprocess(eight, (64, 64)))
    with Segmenter.load(model_dir) as segmenter:
        expected = segmenter.predict(eight).mask
        assert 0 < expected.sum() < expected.size, "the mask must have both classes for the check to mean anything"
        np.testing.assert_array_equal(segmenter.predict(other).mask, expected)
        np.testing.assert_array_equal(segmenter.predict(values).mask, expected)  # arrays follow the same rule
    result = _run(str(model_dir), str(path), "--out", str(tmp_path / "out"), "--no-progress")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / "masks" / f"{path.stem}.png")),
                                  expected * 255)


def test_the_rule_per_value():
    from mrdl_runtime.imaging import to_rgb8

    def gray(values, dtype):
        return to_rgb8(np.array([values], dtype=dtype))[0, :, 0].tolist()

    assert gray([False, True], bool) == [0, 255]
    assert gray([0, 255, 256, 65535], np.uint16) == [0, 0, 1, 255]
    assert gray([0, 511, 65535], ">u2") == [0, 1, 255]  # big-endian 16-bit (Pillow "I;16B")
    assert gray([0, 300, 65535], np.int32) == [0, 1, 255]  # Pillow mode "I" within 16 bits
    assert gray([0.0, 0.5 / 255, 0.49 / 255, 1.0], np.float32) == [0, 1, 0, 255]  # floor(v * 255 + 0.5)
    assert gray([0.0, 2.0, 127.5, 254.49], np.float64) == [0, 2, 128, 254]  # floor(v + 0.5), max > 1
    assert to_rgb8(np.array([[[10, 200]]], np.uint8)).tolist() == [[[10, 10, 10]]]  # gray + alpha
    assert to_rgb8(np.array([[[1, 2, 3, 4]]], np.uint8)).tolist() == [[[1, 2, 3]]]  # RGBA


@pytest.mark.parametrize(("array", "message"), [
    (np.array([[0.5, np.nan]], np.float32), "float image holds NaN or infinite values"),
    (np.array([[0.5, np.inf]], np.float64), "float image holds NaN or infinite values"),
    (np.array([[0.5, -0.25]], np.float32), "float image values down to -0.25; expected [0, 1] or [0, 255]"),
    (np.array([[0.5, 256.0]], np.float32), "float image values up to 256; expected [0, 1] or [0, 255]"),
    (np.array([[0.5, 1.0001]], np.float32), "float image values up to 1.0001: just over [0, 1], and read as [0, 255] "
                                            "the image would be black; clip it to [0, 1]"),
    (np.array([[0.0, 1.99]], np.float64), "float image values up to 1.99: just over [0, 1]"),
    (np.array([[0, 70000]], np.int32), "integer image values from 0 to 70000; expected 8-bit (uint8) or 16-bit"),
    (np.array([[-1, 3]], np.int16), "integer image values from -1 to 3"),
    (np.zeros((4, 4), np.complex64), "image dtype complex64 is not an image type"),
    (np.zeros((4, 4, 5), np.uint8), "got shape (4, 4, 5) with 5 channels"),
    (np.zeros((3, 40, 50), np.uint8), "it looks channels-first; transpose to HxWxC"),
    (np.zeros((2, 4, 4, 3), np.uint8), "got a 4-d array of shape (2, 4, 4, 3)"),
    (np.zeros((0, 4), np.float32), "got an empty image of shape (0, 4)"),
])
def test_bad_arrays_are_refused_naming_the_problem(array, message):
    from mrdl_runtime.imaging import ImageInputError, to_rgb8

    with pytest.raises(ImageInputError) as info:
        to_rgb8(array)
    assert message in str(info.value)


@pytest.mark.parametrize("mode", ["P", "P-transparent", "LA", "RGBA", "1", "CMYK", "I", "multi-frame"])
def test_file_modes_decode_to_their_rgb_colours(tmp_path, mode):
    from mrdl_runtime.imaging import read_image

    rgb = np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    gray = rgb[:, :, 0]
    # CMYK in a JPEG: Pillow's conversion (a CMYK TIFF is refused, as by the C++ reader: test_tiff_decode.py)
    path = tmp_path / {"CMYK": "image.jpg", "I": "image.tif", "multi-frame": "image.tif"}.get(mode, "image.png")
    if mode in ("P", "P-transparent"):
        image = Image.fromarray(rgb).quantize(16)
        if mode == "P-transparent":
            image.info["transparency"] = 0
        image.save(path)
        palette = np.array(image.getpalette()[:48], np.uint8).reshape(16, 3)
        expected = palette[np.asarray(image)]
    elif mode == "LA":
        Image.fromarray(np.dstack([gray, 255 - gray])).save(path)
        expected = np.repeat(gray[:, :, None], 3, axis=2)
    elif mode == "RGBA":
        Image.fromarray(np.dstack([rgb, gray])).save(path)
        expected = rgb
    elif mode == "1":
        Image.fromarray(gray > 127).save(path)
        expected = np.repeat(np.where(gray > 127, 255, 0).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode == "CMYK":
        Image.fromarray(rgb).convert("CMYK").save(path)
        expected = np.asarray(Image.open(path).convert("RGB"))
    elif mode == "I":
        Image.fromarray(gray.astype(np.int32) * 257).save(path)
        expected = np.repeat(gray[:, :, None], 3, axis=2)
    else:
        Image.fromarray(rgb).save(path, save_all=True, append_images=[Image.fromarray(255 - rgb)])
        expected = rgb
    assert Image.open(path).mode == {"P-transparent": "P", "multi-frame": "RGB"}.get(mode, mode)
    np.testing.assert_array_equal(read_image(path), expected)


@pytest.mark.parametrize(("content", "message"), [
    (lambda path: path.write_bytes(b"not an image at all"), "cannot read {path} as an image: cannot identify image"),
    (lambda path: path.write_bytes(_good_png_bytes()[:120]), "cannot read {path} as an image"),
    (lambda path: Image.fromarray(np.full((5, 5), np.nan, np.float32)).save(path, format="TIFF"),
     "{path}: float image holds NaN or infinite values"),
])
def test_unreadable_files_are_refused_naming_the_file(tmp_path, content, message):
    from mrdl_runtime.imaging import ImageReadError, read_image

    path = tmp_path / "bad.png"
    content(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert message.format(path=path) in str(info.value)


def _good_png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _png(header: tuple[int, int, int, int, int], scanlines: bytes) -> bytes:
    """A PNG of IHDR (width, height, bit depth, colour type, interlace) and one IDAT holding ``scanlines``."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    width, height, depth, colour, interlace = header
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(scanlines)) + chunk(b"IEND", b"")


def _adam7_scanlines(image: np.ndarray) -> bytes:
    """``image`` (H, W, C) uint8 as interlaced (Adam7) scanlines, filter type 0 (Pillow writes no interlaced PNG)."""
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    out = b""
    for x, y, dx, dy in passes:
        sub = image[y::dy, x::dx]
        if sub.size:
            out += b"".join(b"\0" + row.tobytes() for row in sub)
    return out


@pytest.mark.parametrize("shape", [(13, 11, 3), (1, 1, 4), (9, 2, 1), (2, 9, 3)])
def test_interlaced_pngs_pass_the_image_data_check(tmp_path, shape):
    from mrdl_runtime.imaging import read_image, to_rgb8

    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    colour = {1: 0, 3: 2, 4: 6}[shape[2]]
    path = tmp_path / "interlaced.png"
    path.write_bytes(_png((shape[1], shape[0], 8, colour, 1), _adam7_scanlines(image)))
    np.testing.assert_array_equal(read_image(path), to_rgb8(image))


@pytest.mark.parametrize("interlace", [0, 1])
def test_a_png_whose_data_ends_before_its_rows_do_is_refused(tmp_path, interlace):
    """Pillow zero-fills the missing rows of a cleanly ended stream; the runtimes refuse it (libpng does in C++)."""
    from mrdl_runtime.imaging import ImageReadError, read_image

    image = np.random.default_rng(2).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    scanlines = _adam7_scanlines(image) if interlace else b"".join(b"\0" + row.tobytes() for row in image)
    path = tmp_path / "short.png"
    path.write_bytes(_png((30, 80, 8, 2, interlace), scanlines))  # the header claims twice the rows
    with pytest.raises(ImageReadError, match=r"it is truncated: its image data inflates to [\d,]+ bytes, and its "
                                             r"30x80 header needs [\d,]+"):
        read_image(path)
    path.write_bytes(_png((30, 40, 8, 2, interlace), scanlines))  # the same data, honestly described
    np.testing.assert_array_equal(read_image(path), image)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_orientation_of_camera_formats_is_applied_as_viewers_do(tmp_path, fmt, orientation):
    from PIL import ImageOps

    from mrdl_runtime.imaging import read_image

    image = Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"camera.{fmt.lower()}"
    image.save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {"lossless": True}))
    decoded = read_image(path)
    with Image.open(path) as stored:
        shown = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    np.testing.assert_array_equal(decoded, shown)
    assert decoded.shape[:2] == ((40, 24) if orientation >= 5 else (24, 40))


def test_a_png_exif_chunk_is_left_alone_as_the_cpp_reader_does(tmp_path):
    from mrdl_runtime.imaging import read_image

    image = np.random.default_rng(4).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(tmp_path / "a.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), image)


# --- pixel limits, checked from the header before decoding ----------------------------------------------------

def test_20000_square_image_is_refused_from_its_header(tmp_path):
    from mrdl_runtime.imaging import ImageReadError, read_image

    path = _png_claiming(tmp_path / "huge.png", 20000, 20000)  # 400 M pixels claimed; decoding would fail
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(info.value) == (f"{path} is 20000x20000 = 400,000,000 pixels, over the limit of 250,000,000 pixels; "
                               "raise it with --max-pixels (max_pixels=) if the file is trusted and memory allows")
    with pytest.raises(ImageReadError, match="as an image"):  # a raised limit lets it reach the decoder
        read_image(path, max_pixels=400_000_000)


def test_pillow_decompression_bomb_check_never_escapes(tmp_path):
    from mrdl_runtime.imaging import ImageReadError, read_image

    before = Image.MAX_IMAGE_PIXELS
    path = _png_claiming(tmp_path / "bomb.png", 14000, 14000)  # 196 M: over Pillow's own error limit, under ours
    assert 14000 * 14000 > 2 * before
    with pytest.raises(ImageReadError, match="cannot read .* as an image"):
        read_image(path)
    with pytest.raises(ImageReadError, match="over the limit of 1,000 pixels"):
        read_image(path, max_pixels=1000)
    assert Image.MAX_IMAGE_PIXELS == before


# --- bounded memory: strip-wise postprocessing equals the whole-image computation ------------------------------

@pytest.mark.parametrize("n_classes", [1, 3])
def test_masks_in_strips_equal_whole_image_resize(monkeypatch, n_classes):
    from mrdl_runtime import imaging, resample

    rng = np.random.default_rng(n_classes)
    probabilities = rng.random((n_classes, 16, 16), dtype=np.float32)
    probabilities[-1, 4, 4] = np.nan  # numpy's argmax counts a NaN as the maximum; so must the strips
    whole = np.stack([np.asarray(Image.fromarray(p).resize((53, 101), Image.BILINEAR)) for p in probabilities])
    expected = (whole[0] > 0.5) if n_classes == 1 else whole.argmax(axis=0)
    monkeypatch.setattr(resample, "STRIP_BYTES", 4 * 53 * 7)  # 7-row strips (mrdl_runtime.resample streams them)
    np.testing.assert_array_equal(imaging.mask_at_size(probabilities, (101, 53), threshold=0.5), expected)
    np.testing.assert_array_equal(imaging.resize_probabilities(probabilities, (101, 53)), whole)


def test_overlay_in_strips_equals_whole_image_blend(monkeypatch):
    from mrdl_runtime import files

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (57, 33, 3), dtype=np.uint8)
    mask = rng.integers(0, 7, (57, 33)).astype(np.uint8)
    blended = image.astype(np.float32)  # the whole-image float32 blend mrdl predict used before
    for label in range(1, int(mask.max()) + 1):
        colour = files.OVERLAY_COLOURS[(label - 1) % len(files.OVERLAY_COLOURS)]
        blended[mask == label] = (1 - files.OVERLAY_ALPHA) * blended[mask == label] + files.OVERLAY_ALPHA * colour
    monkeypatch.setattr(files, "STRIP_BYTES", 12 * 33 * 5)  # 5-row strips
    np.testing.assert_array_equal(files.tint(image.copy(), mask), np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def test_peak_rss_script_measures_and_enforces_its_bound(model_dir, tmp_path, repo_root):
    script = repo_root / "benchmarks" / "peak_rss.py"
    args = [sys.executable, str(script), "--size", "300", "--model-dir", str(model_dir), "--workdir", str(tmp_path)]
    within = subprocess.run([*args, "--limit-mb", "100000"], capture_output=True, text=True)
    assert within.returncode == 0, within.stderr
    assert "peak RSS of mrdl predict on one 300x300 RGB PNG:" in within.stdout and "within the limit" in within.stdout
    above = subprocess.run([*args, "--limit-mb", "1"], capture_output=True, text=True)
    assert above.returncode == 1 and "ABOVE the limit of 1 MB" in above.stdout


# --- batches that finish ----------------------------------------------------------------------------------------

@pytest.fixture
def mixed_folder(tmp_path, gray8) -> Path:
    """a_good.png, c_good.png, e_good.tif and four bad files between and after them, in sorted order."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.fromarray(gray8).save(folder / "a_good.png")
    (folder / "b_bad.png").write_bytes(_good_png_bytes()[:150])  # truncated
    Image.fromarray(gray8).convert("RGB").save(folder / "c_good.png")
    (folder / "d_bad.jpg").write_bytes(b"\xff\xd8 corrupt")
    Image.fromarray(gray8.astype(np.float32) / 255).save(folder / "e_good.tif")
    Image.fromarray(np.full((9, 9), np.nan, np.float32)).save(folder / "f_nan.tif")
    _png_claiming(folder / "g_huge.png", 20000, 20000)
    return folder


def test_skip_segments_every_good_image_and_names_each_failure(model_dir, mixed_folder, tmp_path):
    out = tmp_path / "out"
    result = _run(str(model_dir), str(mixed_folder), "--out", str(out), "--no-progress")
    assert result.exit_code == 1
    assert "3 images ->" in result.output
    assert "4 of 7 images failed:" in result.output
    assert f"  {mixed_folder / 'b_bad.png'}: cannot read {mixed_folder / 'b_bad.png'} as an image" in result.output
    assert f"  {mixed_folder / 'd_bad.jpg'}: cannot read {mixed_folder / 'd_bad.jpg'} as an image" in result.output
    assert f"  {mixed_folder / 'f_nan.tif'}: {mixed_folder / 'f_nan.tif'}: float image holds NaN" in result.output
    assert "g_huge.png is 20000x20000 = 400,000,000 pixels, over the limit of 250,000,000 pixels; raise it " \
           "with --max-pixels" in result.output
    for kind in ("masks", "overlays"):
        assert sorted(p.name for p in (out / kind).iterdir()) == ["a_good.png", "c_good.png", "e_good.png"]
    record = json.loads((out / "predict.json").read_text())
    assert record["outputs"] == ["a_good", "c_good", "e_good"]
    assert sorted(p.name for p in out.iterdir()) == [".mrdl-predict.lock", "masks", "overlays", "predict.json"]


def test_stop_ends_at_the_first_bad_image(model_dir, mixed_folder, tmp_path):
    out = tmp_path / "out"
    result = _run(str(model_dir), str(mixed_folder), "--out", str(out), "--on-error", "stop", "--no-progress")
    assert result.exit_code == 1
    assert "1 images ->" in result.output
    assert "1 of 7 images failed; stopped at the first (--on-error stop), 5 not attempted:" in result.output
    assert f"  {mixed_folder / 'b_bad.png'}: cannot read" in result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a_good.png"]


def test_second_run_into_an_out_in_use_is_refused(model_dir, gray8, tmp_path):
    Image.fromarray(gray8).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".mrdl-predict.lock", "a") as lock:  # what a running mrdl predict holds
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _run(str(model_dir), str(tmp_path / "a.png"), "--out", str(out))
    assert result.exit_code == 1
    assert f"{out} is in use by another mrdl predict run (it holds .mrdl-predict.lock); wait for it to finish " \
           "or choose another --out" in result.output
    assert sorted(p.name for p in out.iterdir()) == [".mrdl-predict.lock"]


def test_out_holding_another_models_masks_is_refused_without_overwrite(model_dir, gray8, tmp_path):
    Image.fromarray(gray8).save(tmp_path / "a.png")
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "old.png").write_bytes(b"another model's mask")
    (out / "masks" / "mine.png").write_bytes(b"the user's own file, never recorded")
    other = {"model_dir": "/elsewhere/deploy", "export_id": "0" * 32, "name": "base", "precision": "fp32"}
    (out / "predict.json").write_text(json.dumps({"format": "mrdl-predict/1", "model": other, "outputs": ["old"]}))
    result = _run(str(model_dir), str(tmp_path / "a.png"), "--out", str(out))
    assert result.exit_code == 1
    assert f"{out} holds masks of another model (/elsewhere/deploy, export {'0' * 32}, fp32); predict into " \
           "another --out, or pass --overwrite to replace them" in result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["mine.png", "old.png"]

    result = _run(str(model_dir), str(tmp_path / "a.png"), "--out", str(out), "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["a.png", "mine.png"]  # the recorded one is gone
    record = json.loads((out / "predict.json").read_text())
    assert record["model"]["model_dir"] == str(model_dir.resolve()) and record["outputs"] == ["a"]
    rerun = _run(str(model_dir), str(tmp_path / "a.png"), "--out", str(out))  # same model: allowed
    assert rerun.exit_code == 0, rerun.output


@pytest.mark.parametrize("record", [{"model": None, "outputs": []}, {"model": "x", "outputs": []},
                                    {"model": {}, "outputs": "abc"}, {"model": {}, "outputs": [1]}])
def test_a_predict_json_of_the_wrong_shape_is_unreadable(model_dir, gray8, tmp_path, record):
    Image.fromarray(gray8).save(tmp_path / "a.png")
    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "a.png").write_bytes(b"kept")
    (out / "predict.json").write_text(json.dumps({"format": "mrdl-predict/1", **record}))
    result = _run(str(model_dir), str(tmp_path / "a.png"), "--out", str(out))
    assert result.exit_code == 1 and "predict.json is unreadable (its 'model' must be an object" in result.output
    assert (out / "masks" / "a.png").read_bytes() == b"kept"  # nothing deleted on a record it cannot trust


def test_out_with_unrecorded_masks_is_refused(model_dir, gray8, tmp_path):
    Image.fromarray(gray8).save(tmp_path / "a.png")
    out = tmp_path / "out"
    (out / "overlays").mkdir(parents=True)
    (out / "overlays" / "x.png").write_bytes(b"from somewhere")
    result = _run(str(model_dir), str(tmp_path / "a.png"), "--out", str(out))
    assert result.exit_code == 1
    assert f"{out} holds 1 PNGs in masks/ or overlays/ but no predict.json naming the model that wrote them" \
        in result.output
    assert not (out / "masks").exists()


def _predict_until_a_mask_is_written(model_dir, tmp_path, interruptible):
    """``mrdl predict`` on 400 images, started and waited for until its first mask exists: (process, out)."""
    folder = tmp_path / "many"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(400):
        Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(folder / f"i{index:03d}.png")
    out = tmp_path / "out"
    process = subprocess.Popen(interruptible([sys.executable, "-m", "mrdl_apps", "predict",
                                              str(model_dir), str(folder), "--out", str(out), "--no-progress"]),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (out / "masks").is_dir() or not any((out / "masks").iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "mrdl predict ended before writing a mask"
        time.sleep(0.05)
    return process, out


@pytest.mark.parametrize("sent", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: kill, timeout, a container stop
def test_an_interrupt_exits_130_and_says_how_many_images_were_written(model_dir, tmp_path, interruptible, sent):
    process, out = _predict_until_a_mask_is_written(model_dir, tmp_path, interruptible)
    process.send_signal(sent)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 130, output
    assert "Traceback" not in output
    recorded = json.loads((out / "predict.json").read_text())["outputs"]
    assert f"interrupted: {len(recorded)} images written to {out}; run the same command again" in output
    assert 0 < len(recorded) < 400
    assert sorted(p.stem for p in (out / "masks").iterdir()) == recorded  # Ctrl-C waits for an image's files
    for stem in recorded:
        assert (out / "masks" / f"{stem}.png").is_file() and (out / "overlays" / f"{stem}.png").is_file()
    assert not [p for p in (out / "masks").iterdir() if p.suffix == ".tmp"]
    assert not [p for p in (out / "overlays").iterdir() if p.suffix == ".tmp"]


def test_a_run_killed_outright_leaves_no_mask_that_the_record_does_not_name(model_dir, tmp_path, interruptible):
    process, out = _predict_until_a_mask_is_written(model_dir, tmp_path, interruptible)
    process.kill()  # SIGKILL, as the out-of-memory killer sends: no handler runs
    process.communicate(timeout=60)
    recorded = set(json.loads((out / "predict.json").read_text())["outputs"])  # written ahead of the masks
    assert {p.stem for p in (out / "masks").iterdir() if p.suffix == ".png"} <= recorded
    rerun = _run(str(model_dir), str(out.parent / "many" / "i000.png"), "--out", str(out))
    assert rerun.exit_code == 0, rerun.output  # the same model carries on where it was killed
    kept = json.loads((out / "predict.json").read_text())["outputs"]
    assert kept == sorted(p.stem for p in (out / "masks").iterdir() if p.suffix == ".png")  # no names without files
