"""Every TIFF layout decodes by the one rule or is refused, as the C++ reader decides (read_image).

Pillow's TIFF reader turned some layouts into plausible but wrong pixels: the low byte (in fact
bytes of the wrong samples) of uncompressed separate-plane 16-bit RGB, 16-bit min-is-white left
uninverted, associated alpha un-premultiplied, YCbCr / CMYK converted by its own formulas, signed
8-bit read as unsigned and (through libtiff) big-endian signed and float samples byte-swapped.
``read_image`` now checks the tags first, refuses what the C++ reader refuses (with its wording)
and decodes the rest with whichever Pillow reader is right for the layout. The grid below writes
each combination with the hand-written TIFF writer of tests/cpp/make_test_data.py and compares
with the rule applied by numpy to the samples written. Other 16-bit paths (PNG gray, gray+alpha,
RGB, RGBA; big-endian TIFF from Pillow) are checked the same way.
"""

from __future__ import annotations

import importlib.util
import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parent / "cpp" / "make_test_data.py"

# sample type -> (numpy dtype, TIFF SampleFormat)
DTYPES = {"u8": (np.uint8, 1), "u16": (np.uint16, 1), "i8": (np.int8, 2), "i16": (np.int16, 2),
          "u32": (np.uint32, 1), "i32": (np.int32, 2), "f32": (np.float32, 3), "f64": (np.float64, 3)}
COLORS = {"gray": (1, 1), "miniswhite": (0, 1), "rgb": (2, 3)}  # name -> (Photometric, colour samples)
EXTRAS = {"": (), "X": (0,), "a": (1,), "A": (2,)}  # none, unspecified, associated alpha, unassociated alpha


@pytest.fixture(scope="module")
def write_tiff():
    spec = importlib.util.spec_from_file_location("make_test_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._write_tiff


def _samples(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values the rule accepts for the type, spread so that high and low bytes differ."""
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    top = {1: 127 if dtype.kind == "i" else 255, 2: 32767 if dtype.kind == "i" else 65535}.get(dtype.itemsize, 65535)
    return rng.integers(0, top + 1, shape).astype(dtype)


def _cpp_refusal(photometric: int, dtype: np.dtype, extra: tuple[int, ...]) -> str | None:
    """The C++ reader's refusal (a fragment of its message) for a layout, from runtime/cpp/examples/tiff_io.cpp."""
    if extra[:1] == (1,):
        return "associated (premultiplied) alpha"
    if dtype.kind == "i" and dtype.itemsize == 1:
        return "8-bit signed samples; expected unsigned 1/2/4/8/16/32-bit, signed 16/32-bit or 32/64-bit float"
    if photometric == 0 and not (dtype.kind == "u" and dtype.itemsize == 1):
        return f"min-is-white TIFF with {dtype.itemsize * 8}-bit samples"
    return None


def _reference(pixels: np.ndarray, photometric: int, colors: int) -> np.ndarray:
    from mrdl_runtime.imaging import to_rgb8

    if photometric == 0:  # min-is-white (8-bit here): inverted colour samples
        pixels = pixels.copy()
        pixels[:, :, :colors] = 255 - pixels[:, :, :colors]
    return to_rgb8(pixels.astype(np.int64) if pixels.dtype == np.uint32 else pixels)


GRID = [(c, d, e, planar, deflate, order) for c, d, e, planar, deflate, order in itertools.product(
    COLORS, DTYPES, EXTRAS, (1, 2), (False, True), ("<", ">")) if not (c == "miniswhite" and d not in ("u8", "u16"))]


def test_every_tiff_layout_decodes_by_the_rule_or_is_refused(write_tiff, tmp_path):
    """No layout of the grid decodes to anything but the rule's pixels; C++'s refusals are Python's."""
    from mrdl_runtime.imaging import ImageReadError, read_image

    rng = np.random.default_rng(7)
    decoded, refused = set(), {}
    for index, (color, dtype_name, extra_name, planar, deflate, order) in enumerate(GRID):
        (photometric, colors), (dtype, sample_format) = COLORS[color], DTYPES[dtype_name]
        extra = EXTRAS[extra_name]
        name = f"{color}_{dtype_name}{extra_name}_planar{planar}_{'deflate' if deflate else 'raw'}_{order}"
        pixels = _samples(np.dtype(dtype), (13, 21, colors + len(extra)), rng)
        path = tmp_path / f"{name}.tif"
        tiles = 16 if index % 2 else None  # strips and tiles alternate (the grid's other axes all vary over both)
        write_tiff(path, pixels, photometric=photometric, byte_order=order, tile=tiles, rows_per_strip=None if tiles else 5,
                   planar=planar, deflate=deflate, extra_samples=extra, sample_format=sample_format)
        cpp_refusal = _cpp_refusal(photometric, np.dtype(dtype), extra)
        try:
            rgb = read_image(path)
        except ImageReadError as exc:
            refused[name] = str(exc)
            assert cpp_refusal is None or cpp_refusal in str(exc), name
            continue
        assert cpp_refusal is None, f"{name}: decoded, but the C++ reader refuses it ({cpp_refusal})"
        np.testing.assert_array_equal(rgb, _reference(pixels, photometric, colors), err_msg=f"{name}: not the rule")
        decoded.add(name)
    # What must decode: 8- and 16-bit gray and RGB, with unassociated alpha or an unspecified extra
    # sample, contiguous or separate planes, raw or deflate, either byte order; min-is-white 8-bit;
    # little-endian float32 and 16-bit signed.
    for color, dtype_name, extra_name, planar, deflate, order in GRID:
        name = f"{color}_{dtype_name}{extra_name}_planar{planar}_{'deflate' if deflate else 'raw'}_{order}"
        core = (dtype_name in ("u8", "u16") and color != "miniswhite" and extra_name in ("", "A")
                and not (color == "gray" and dtype_name == "u16" and extra_name == "A"))  # Pillow has no 16-bit LA
        core |= color == "miniswhite" and dtype_name == "u8" and extra_name == ""
        core |= dtype_name in ("f32", "i16") and order == "<" and extra_name == "" and color == "gray"
        if core:
            assert name in decoded, f"{name} must decode: {refused.get(name)}"
    assert len(decoded) >= 100, f"only {len(decoded)} layouts decoded"
    print(f"{len(GRID)} layouts: {len(decoded)} decoded by the rule, {len(refused)} refused")


@pytest.mark.parametrize(("case", "message"), [
    ("rgb16_planar_raw", None),  # (a) was bytes of the wrong samples; now decodes by the rule
    ("gray8_min_is_white_planar_raw", None),  # was left uninverted
    ("gray16_min_is_white", "min-is-white TIFF with 16-bit samples; the Python reader inverts 1- to 8-bit"),  # (b)
    ("float32_min_is_white", "min-is-white TIFF with 32-bit samples"),
    ("rgba8_associated_alpha", "TIFF with associated (premultiplied) alpha; the Python reader takes unassociated"),  # (c)
    ("rgba16_associated_alpha", "TIFF with associated (premultiplied) alpha"),
    ("ycbcr_uncompressed", "TIFF photometric interpretation YCbCr (other than JPEG-compressed); the Python reader "
                           "takes gray, RGB or palette TIFFs"),  # (d)
    ("ycbcr_deflate", "TIFF photometric interpretation YCbCr (other than JPEG-compressed)"),
    ("cmyk", "TIFF photometric interpretation CMYK (separated)"),
    ("cielab", "TIFF photometric interpretation CIELab"),
    ("int8", "TIFF with 8-bit signed samples"),
    ("int16_big_endian_deflate", "compressed big-endian TIFF with 16-bit signed samples: Pillow's libtiff reader "
                                 "leaves them byte-swapped"),
    ("float32_big_endian_planar", "separate-plane big-endian TIFF with 32-bit float samples"),
    ("float64", "Pillow cannot decode this TIFF layout (gray, 1 samples per pixel of 64-bit float"),
    ("no_photometric", "TIFF without a PhotometricInterpretation tag; expected gray, RGB or palette"),
])
def test_each_reported_layout(write_tiff, tmp_path, case, message):
    """The four reported layouts (a)-(d) and their neighbours: the rule's pixels or a clear refusal."""
    from mrdl_runtime.imaging import ImageReadError, read_image, to_rgb8

    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65536, (9, 11, 3)).astype(np.uint16)
    small = rng.integers(0, 128, (9, 11, 1)).astype(np.int16)  # byte-swapped these would stay in range
    options = {
        "rgb16_planar_raw": (rgb16, {"photometric": 2, "planar": 2}),
        "gray8_min_is_white_planar_raw": (rgb16[:, :, :1].astype(np.uint8), {"photometric": 0, "planar": 2}),
        "gray16_min_is_white": (rgb16[:, :, :1], {"photometric": 0}),
        "float32_min_is_white": (rng.random((9, 11, 1)).astype(np.float32), {"photometric": 0, "sample_format": 3}),
        "rgba8_associated_alpha": (rgb16.astype(np.uint8)[:, :, [0, 1, 2, 0]], {"photometric": 2, "extra_samples": (1,)}),
        "rgba16_associated_alpha": (rgb16[:, :, [0, 1, 2, 0]], {"photometric": 2, "extra_samples": (1,)}),
        "ycbcr_uncompressed": (rgb16.astype(np.uint8), {"photometric": 6}),
        "ycbcr_deflate": (rgb16.astype(np.uint8), {"photometric": 6, "deflate": True}),
        "cmyk": (rgb16.astype(np.uint8)[:, :, [0, 1, 2, 0]], {"photometric": 5}),
        "cielab": (rgb16.astype(np.uint8), {"photometric": 8}),
        "int8": (small.astype(np.int8), {"photometric": 1, "sample_format": 2}),
        "int16_big_endian_deflate": (small, {"photometric": 1, "sample_format": 2, "byte_order": ">", "deflate": True}),
        "float32_big_endian_planar": (rng.random((9, 11, 3)).astype(np.float32),
                                      {"photometric": 2, "sample_format": 3, "byte_order": ">", "planar": 2}),
        "float64": (rng.random((9, 11, 1)), {"photometric": 1, "sample_format": 3}),
        "no_photometric": (rgb16.astype(np.uint8), {"photometric": 2}),
    }
    pixels, keywords = options[case]
    path = tmp_path / f"{case}.tif"
    write_tiff(path, pixels, **keywords)
    if case == "no_photometric":  # the PhotometricInterpretation entry renamed to an unknown private tag
        data = bytearray(path.read_bytes())
        (ifd,) = struct.unpack_from("<I", data, 4)
        (count,) = struct.unpack_from("<H", data, ifd)
        entry = next(e for e in range(ifd + 2, ifd + 2 + 12 * count, 12) if struct.unpack_from("<H", data, e)[0] == 262)
        struct.pack_into("<H", data, entry, 65000)
        path.write_bytes(bytes(data))
    if message is None:
        expected = to_rgb8(255 - pixels if keywords["photometric"] == 0 else pixels)
        np.testing.assert_array_equal(read_image(path), expected)
        assert not np.array_equal(expected, to_rgb8(pixels & 0xFF if pixels.dtype == np.uint16 else pixels))  # the old wrong pixels
    else:
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_tiff_vectors_refusals_are_python_refusals(tmp_path):
    """The TIFF files the C++ vectors mark as refused (tests/cpp/make_test_data.py) are refused by
    read_image too, naming the same layout where the refusal is the layout's."""
    from mrdl_runtime.imaging import ImageReadError, read_image

    spec = importlib.util.spec_from_file_location("make_test_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cases = module._tiff_vectors(tmp_path, np.random.default_rng(5))  # asserts the accepted ones follow the rule
    refusals = [case for case in cases if "error" in case]
    assert len(refusals) >= 4
    for case in refusals:
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / case["file"])
        if not case["name"].startswith(("error_truncated", "error_damaged", "error_huge")):  # libtiff's own words in C++
            assert case["error"] in str(info.value), (case["name"], str(info.value))


def test_tiff_orientation_is_applied_as_pillow_does(tmp_path):
    """Pillow applies a TIFF's Orientation tag on load (the C++ reader, for now, does not: reported)."""
    from mrdl_runtime.imaging import read_image

    rgb = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rotated.tif", tiffinfo={274: 6})  # 6: rotate 90 clockwise to display
    np.testing.assert_array_equal(read_image(tmp_path / "rotated.tif"), np.rot90(rgb, -1))


# --- other 16-bit paths: PNG variants Pillow converts on its own, and Pillow's big-endian TIFF ----------------------

def _png(path: Path, pixels: np.ndarray, color_type: int) -> None:
    """A 16-bit PNG (gray 0, RGB 2, gray+alpha 4, RGBA 6) written by hand: Pillow cannot write most of them."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\0" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("variant", "channels"), [("gray", 1), ("gray_alpha", 2), ("rgb", 3), ("rgba", 4),
                                                    ("tiff_big_endian", 1), ("tiff_little_endian", 1)])
def test_16bit_files_keep_the_high_byte(tmp_path, variant, channels):
    from mrdl_runtime.imaging import read_image

    pixels = np.random.default_rng(11).integers(0, 65536, (17, 23, channels)).astype(np.uint16)
    high = (pixels >> 8).astype(np.uint8)
    expected = np.repeat(high[:, :, :1], 3, axis=2) if channels <= 2 else high[:, :, :3]
    if variant.startswith("tiff"):
        path = tmp_path / f"{variant}.tif"
        if variant == "tiff_big_endian":  # not Image.convert("I;16B"): that clamps the values to 255
            image = Image.frombytes("I;16B", pixels.shape[1::-1], pixels[:, :, 0].astype(">u2").tobytes())
        else:
            image = Image.fromarray(pixels[:, :, 0])
        image.save(path)
    else:
        path = tmp_path / f"{variant}.png"
        _png(path, pixels if channels > 1 else pixels[:, :, 0], {1: 0, 2: 4, 3: 2, 4: 6}[channels])
    np.testing.assert_array_equal(read_image(path), expected, err_msg=f"{variant}: Pillow mode {Image.open(path).mode}")
    assert not np.array_equal(expected, np.repeat((pixels[:, :, :1] & 0xFF).astype(np.uint8), 3, axis=2))
