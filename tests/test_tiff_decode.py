"""Every TIFF layout decodes by the one rule or is refused, as the C++ reader decides (read_image).

Pillow's TIFF reader turned some layouts into plausible but wrong pixels: the low byte (in fact
bytes of the wrong samples) of uncompressed separate-plane 16-bit RGB, 16-bit min-is-white left
uninverted, associated alpha un-premultiplied, YCbCr / CMYK converted by its own formulas, signed
8-bit read as unsigned and (through libtiff) big-endian signed and float samples byte-swapped.
``read_image`` now checks the tags first, refuses what the C++ reader refuses (with its wording)
and decodes the rest with whichever Pillow reader is right for the layout. The grid below writes
each combination with the hand-written TIFF writer of tests/helpers/cpp_vectors.py and compares
with the rule applied by numpy to the samples written. Other 16-bit paths (PNG gray, gray+alpha,
RGB, RGBA; big-endian TIFF from Pillow) are checked the same way.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import cpp_vectors


# sample type -> (numpy dtype, TIFF SampleFormat)
DTYPES = {"u8": (np.uint8, 1), "u16": (np.uint16, 1), "i8": (np.int8, 2), "i16": (np.int16, 2),
          "u32": (np.uint32, 1), "i32": (np.int32, 2), "f32": (np.float32, 3), "f64": (np.float64, 3)}
COLORS = {"gray": (1, 1), "miniswhite": (0, 1), "rgb": (2, 3)}  # name -> (Photometric, colour samples)
EXTRAS = {"": (), "X": (0,), "a": (1,), "A": (2,)}  # none, unspecified, associated alpha, unassociated alpha


def _packbits(data: bytes, row_bytes: int) -> bytes:
    """PackBits (TIFF compression 32773) with literal runs only, row by row."""
    out = bytearray()
    for row in range(0, len(data), row_bytes):
        line = data[row:row + row_bytes]
        for start in range(0, len(line), 128):
            block = line[start:start + 128]
            out += bytes([len(block) - 1]) + block
    return bytes(out)


@pytest.fixture(scope="module")
def write_tiff():
    """The hand-written TIFF writer (helpers.cpp_vectors), plus ``packbits=True``: PackBits strips or tiles,
    which Pillow decodes through libtiff (the writer's deflate step swapped for PackBits, the
    Compression tag patched)."""
    def write(path: Path, pixels: np.ndarray, *, packbits: bool = False, float_predictor: bool = False,
              **options) -> None:
        if not (packbits or float_predictor):
            return cpp_vectors.write_tiff(path, pixels, **options)
        options.pop("deflate", None)
        order = options.get("byte_order", "<")
        samples = 1 if options.get("planar", 1) == 2 else pixels.shape[2]
        row_values = (options.get("tile") or pixels.shape[1]) * samples
        stored = pixels.dtype.newbyteorder(order)

        class Codec:
            @staticmethod
            def compress(raw: bytes) -> bytes:
                if packbits:
                    return _packbits(raw, row_values * pixels.dtype.itemsize)
                # floating-point predictor (libtiff's fpDiff): each row's values as byte planes, most
                # significant first, then bytes differenced with a stride of the samples per pixel
                values = np.frombuffer(raw, stored).reshape(-1, row_values)
                msb = values.astype(stored.newbyteorder(">")).view(np.uint8).reshape(len(values), row_values, -1)
                planes = msb.transpose(0, 2, 1).reshape(len(values), -1)
                differenced = planes.copy()
                differenced[:, samples:] = planes[:, samples:] - planes[:, :-samples]
                return zlib.compress(differenced.tobytes())

        cpp_vectors.write_tiff(path, pixels, deflate=True, compress=Codec.compress, **options)
        data = bytearray(path.read_bytes())
        (ifd,) = struct.unpack_from(order + "I", data, 4)
        (count,) = struct.unpack_from(order + "H", data, ifd)
        for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
            tag = struct.unpack_from(order + "H", data, entry)[0]
            if tag == 259 and packbits:
                struct.pack_into(order + "H", data, entry + 8, 32773)
            if tag == 284 and float_predictor:  # PlanarConfiguration made Predictor 3 (still in tag order)
                assert options.get("planar", 1) == 1
                struct.pack_into(order + "HHIH", data, entry, 317, 3, 1, 3)
        path.write_bytes(bytes(data))

    return write


def _samples(dtype: np.dtype, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Values the rule accepts for the type, spread so that high and low bytes differ."""
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    top = {1: 127 if dtype.kind == "i" else 255, 2: 32767 if dtype.kind == "i" else 65535}.get(dtype.itemsize, 65535)
    return rng.integers(0, top + 1, shape).astype(dtype)


def _cpp_refusal(photometric: int, dtype: np.dtype, extra: tuple[int, ...]) -> str | None:
    """The C++ reader's refusal (a fragment of its message) for a layout, from runtime/cpp/src/imageio/tiff.cpp."""
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


# compression: raw and deflate are decoded by read_image itself, PackBits by Pillow through libtiff
GRID = [(c, d, e, planar, compression, order) for c, d, e, planar, compression, order in itertools.product(
    COLORS, DTYPES, EXTRAS, (1, 2), ("raw", "deflate", "packbits"), ("<", ">"))
    if not (c == "miniswhite" and d not in ("u8", "u16"))]


def test_every_tiff_layout_decodes_by_the_rule_or_is_refused(write_tiff, tmp_path):
    """No layout of the grid decodes to anything but the rule's pixels; C++'s refusals are Python's."""
    from mrdl_runtime.imaging import ImageReadError, read_image

    rng = np.random.default_rng(7)
    decoded, refused = set(), {}
    for index, (color, dtype_name, extra_name, planar, compression, order) in enumerate(GRID):
        (photometric, colors), (dtype, sample_format) = COLORS[color], DTYPES[dtype_name]
        extra = EXTRAS[extra_name]
        name = f"{color}_{dtype_name}{extra_name}_planar{planar}_{compression}_{order}"
        pixels = _samples(np.dtype(dtype), (13, 21, colors + len(extra)), rng)
        path = tmp_path / f"{name}.tif"
        tiles = 16 if index % 2 else None  # strips and tiles alternate (the grid's other axes all vary over both)
        write_tiff(path, pixels, photometric=photometric, byte_order=order, tile=tiles,
                   rows_per_strip=None if tiles else 5,
                   planar=planar, deflate=compression == "deflate", packbits=compression == "packbits",
                   extra_samples=extra, sample_format=sample_format)
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
    # Every layout the C++ reader takes decodes (read_image places the samples; libtiff decompresses PackBits).
    for color, dtype_name, extra_name, planar, compression, order in GRID:
        name = f"{color}_{dtype_name}{extra_name}_planar{planar}_{compression}_{order}"
        if _cpp_refusal(COLORS[color][0], np.dtype(DTYPES[dtype_name][0]), EXTRAS[extra_name]) is None:
            assert name in decoded, f"{name} must decode: {refused.get(name)}"
    assert len(decoded) >= 500, f"only {len(decoded)} layouts decoded"
    print(f"{len(GRID)} layouts: {len(decoded)} decoded by the rule, {len(refused)} refused")


@pytest.mark.parametrize(("case", "message"), [
    ("rgb16_planar_raw", None),  # (a) was bytes of the wrong samples; now decodes by the rule
    ("gray8_min_is_white_planar_raw", None),  # was left uninverted
    ("gray16_min_is_white", "min-is-white TIFF with 16-bit samples; the Python reader inverts 1- to 8-bit"),  # (b)
    ("float32_min_is_white", "min-is-white TIFF with 32-bit samples"),
    # (c)
    ("rgba8_associated_alpha", "TIFF with associated (premultiplied) alpha; the Python reader takes unassociated"),
    ("rgba16_associated_alpha", "TIFF with associated (premultiplied) alpha"),
    ("ycbcr_uncompressed", "TIFF photometric interpretation YCbCr (other than JPEG-compressed); the Python reader "
                           "takes gray, RGB or palette TIFFs"),  # (d)
    ("ycbcr_deflate", "TIFF photometric interpretation YCbCr (other than JPEG-compressed)"),
    ("cmyk", "TIFF photometric interpretation CMYK (separated)"),
    ("cielab", "TIFF photometric interpretation CIELab"),
    ("int8", "TIFF with 8-bit signed samples"),
    ("int16_big_endian_deflate", None),  # through Pillow's libtiff reader: byte-swapped values, silently
    ("int16_big_endian_packbits", None),  # Pillow (libtiff) left them byte-swapped
    ("float32_big_endian_planar", None),
    ("float64", None),  # Pillow cannot read it at all
    ("rgb_float32_predictor3", None),  # Pillow has no unpacker for it
    ("float32_big_endian_predictor3_tiles", None),  # Pillow (libtiff) left it byte-swapped
    ("gray16_alpha_packbits", None),  # Pillow has no unpacker for it
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
        "rgba8_associated_alpha": (rgb16.astype(np.uint8)[:, :, [0, 1, 2, 0]],
                                   {"photometric": 2, "extra_samples": (1,)}),
        "rgba16_associated_alpha": (rgb16[:, :, [0, 1, 2, 0]], {"photometric": 2, "extra_samples": (1,)}),
        "ycbcr_uncompressed": (rgb16.astype(np.uint8), {"photometric": 6}),
        "ycbcr_deflate": (rgb16.astype(np.uint8), {"photometric": 6, "deflate": True}),
        "cmyk": (rgb16.astype(np.uint8)[:, :, [0, 1, 2, 0]], {"photometric": 5}),
        "cielab": (rgb16.astype(np.uint8), {"photometric": 8}),
        "int8": (small.astype(np.int8), {"photometric": 1, "sample_format": 2}),
        "int16_big_endian_deflate": (small, {"photometric": 1, "sample_format": 2, "byte_order": ">", "deflate": True}),
        "int16_big_endian_packbits": (small, {"photometric": 1, "sample_format": 2, "byte_order": ">",
                                              "packbits": True}),
        "gray16_alpha_packbits": (rgb16[:, :, :2], {"photometric": 1, "extra_samples": (2,), "packbits": True}),
        "float32_big_endian_planar": (rng.random((9, 11, 3)).astype(np.float32),
                                      {"photometric": 2, "sample_format": 3, "byte_order": ">", "planar": 2}),
        "float64": (rng.random((9, 11, 1)), {"photometric": 1, "sample_format": 3}),
        "rgb_float32_predictor3": (rng.random((9, 11, 3)).astype(np.float32),
                                   {"photometric": 2, "sample_format": 3, "float_predictor": True}),
        "float32_big_endian_predictor3_tiles": (rng.random((20, 21, 1)).astype(np.float32),
                                                {"photometric": 1, "sample_format": 3, "float_predictor": True,
                                                 "byte_order": ">", "tile": 16}),
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
        if pixels.dtype.kind in "ui":  # not what Pillow gave: the low byte, uninverted or byte-swapped values
            wrong = {2: (pixels & 0xFF).astype(np.uint8), 1: pixels}.get(pixels.dtype.itemsize)
            wrong = (pixels.byteswap() >> 8).astype(np.uint8) if pixels.dtype == np.int16 else wrong
            assert not np.array_equal(expected, to_rgb8(wrong))
    else:
        with pytest.raises(ImageReadError) as info:
            read_image(path)
        assert str(path) in str(info.value) and message in str(info.value), str(info.value)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the truncated file
def test_tiff_vectors_refusals_are_python_refusals(tmp_path):
    """The TIFF files the C++ vectors mark as refused (tests/cpp/make_test_data.py) are refused by
    read_image too, naming the same layout where the refusal is the layout's."""
    from mrdl_runtime.imaging import ImageReadError, read_image

    cases = cpp_vectors.tiff_vectors(tmp_path, np.random.default_rng(5))  # asserts the accepted ones follow the rule
    refusals = [case for case in cases if "error" in case]
    assert len(refusals) >= 4
    for case in refusals:
        with pytest.raises(ImageReadError) as info:
            read_image(tmp_path / case["file"])
        if case["name"] not in ("error_truncated", "error_damaged_tile"):  # libtiff's own words in C++
            assert case["error"] in str(info.value), (case["name"], str(info.value))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_as_pillow_does(tmp_path, orientation):
    """The Orientation tag is applied as Pillow applies it on loading a TIFF (ImageOps.exif_transpose),
    by read_image's own decoder (uncompressed) as by Pillow's (LZW). The C++ reader applies it too
    (the orientation vectors of tests/cpp/make_test_data.py, ctest tiff_vectors)."""
    from PIL import ImageOps

    from mrdl_runtime.imaging import read_image

    rgb = np.random.default_rng(0).integers(0, 256, (10, 20, 3), dtype=np.uint8)
    expected = np.asarray(ImageOps.exif_transpose(_with_orientation(Image.fromarray(rgb), orientation)))
    for compression in ("raw", "tiff_lzw"):
        path = tmp_path / f"{compression}.tif"
        Image.fromarray(rgb).save(path, tiffinfo={274: orientation}, compression=compression)
        np.testing.assert_array_equal(read_image(path), expected, err_msg=compression)
    assert (orientation == 1) == np.array_equal(expected, rgb)


def _with_orientation(image: Image.Image, orientation: int) -> Image.Image:
    exif = image.getexif()
    exif[274] = orientation
    image.info["exif"] = exif.tobytes()
    return image


@pytest.mark.parametrize(("damage", "message"), [
    ("cut", "TIFF tile or strip 2 is truncated"),
    ("deflate", "TIFF strips / tiles (compression 8) cannot be decoded (error: Error -3 while decompressing"),
    ("lzw", "TIFF strips / tiles (compression 5) cannot be decoded (OSError: decoder error"),
    ("offsets", "TIFF with 3 tiles / strips; expected at least 6"),
])
def test_damaged_samples_are_refused_naming_the_chunk(write_tiff, tmp_path, damage, message):
    from mrdl_runtime.imaging import ImageReadError, read_image

    pixels = np.random.default_rng(2).integers(0, 65536, (20, 9, 3)).astype(np.uint16)
    path = tmp_path / f"{damage}.tif"
    if damage == "lzw":  # Pillow's LZW writer (8-bit RGB, one strip): read_image has libtiff decompress it
        Image.fromarray(pixels.astype(np.uint8)).save(path, compression="tiff_lzw")
    else:
        write_tiff(path, pixels, photometric=2, rows_per_strip=7, deflate=damage == "deflate")
    data = bytearray(path.read_bytes())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    entries = {struct.unpack_from("<H", data, entry)[0]: entry for entry in range(ifd + 2, ifd + 2 + 12 * count, 12)}
    if damage == "cut":  # the last strip's byte count (StripByteCounts, 3 values stored out of line) cut to 50
        (values,) = struct.unpack_from("<I", data, entries[279] + 8)
        struct.pack_into("<I", data, values + 8, 50)
    elif damage in ("deflate", "lzw"):
        data[8:40] = bytes(range(32))  # inside the first strip's compressed stream
    else:  # separate planes claimed: 3 strips for 3 planes of 3 strips each
        struct.pack_into("<H", data, entries[284] + 8, 2)
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def _patch_tags(path: Path, values: dict[int, int]) -> None:
    """Rewrite in-line SHORT / LONG values of a little-endian TIFF's first directory."""
    data = bytearray(path.read_bytes())
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in values:
            struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, values[tag])
    path.write_bytes(bytes(data))


def test_huge_strips_are_refused_before_pillow_allocates_them(tmp_path):
    """An LZW file (Pillow's path) claiming 60000 x 6000 RGB strips: refused from the tags, as in C++."""
    from mrdl_runtime.imaging import ImageReadError, read_image

    path = tmp_path / "huge.tif"
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(path, compression="tiff_lzw")
    _patch_tags(path, {256: 60000, 257: 6000, 278: 6000})
    with pytest.raises(ImageReadError, match="TIFF strips of 1080000000 bytes; the reader takes at most 1073741824"):
        read_image(path, max_pixels=10**9)


@pytest.mark.parametrize("kind", ["rgb_lzw", "palette_lzw"])  # read_image's decoder (libtiff), Pillow's
def test_pillow_bomb_check_on_loading_a_tiff_never_escapes(tmp_path, monkeypatch, kind):
    """Pillow repeats its decompression-bomb check when it loads a TIFF: under max_pixels, a TIFF over
    Pillow's own limit (2 x MAX_IMAGE_PIXELS, 179 M pixels by default) decodes (it raised
    DecompressionBombError, not an ImageReadError, before)."""
    from mrdl_runtime.imaging import read_image

    rgb = np.random.default_rng(4).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    image = Image.fromarray(rgb) if kind == "rgb_lzw" else Image.fromarray(rgb).quantize(16)
    image.save(tmp_path / "lzw.tif", compression="tiff_lzw")
    expected = np.asarray(image.convert("RGB"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels: over twice the limit
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif"), expected)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_threads_decode_tiffs_as_one_thread_does(write_tiff, tmp_path):
    """read_image from 4 threads at once (libtiff, zlib and Pillow paths; Pillow globals under a lock)."""
    from concurrent.futures import ThreadPoolExecutor

    from mrdl_runtime.imaging import read_image

    rgb16 = np.random.default_rng(6).integers(0, 65536, (64, 48, 3)).astype(np.uint16)
    write_tiff(tmp_path / "deflate.tif", rgb16, photometric=2, tile=16, deflate=True)
    write_tiff(tmp_path / "packbits.tif", rgb16, photometric=2, planar=2, packbits=True, rows_per_strip=5)
    Image.fromarray((rgb16 >> 8).astype(np.uint8)).quantize(32).save(tmp_path / "palette.tif", compression="tiff_lzw")
    paths = [tmp_path / name for name in ("deflate.tif", "packbits.tif", "palette.tif")] * 8
    alone = [read_image(path) for path in paths]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(read_image, paths))
    for path, one, other in zip(paths, alone, together):
        np.testing.assert_array_equal(other, one, err_msg=path.name)
    np.testing.assert_array_equal(alone[0], (rgb16 >> 8).astype(np.uint8))


# --- other 16-bit paths: PNG variants Pillow converts on its own, and Pillow's big-endian TIFF ----------------------

def _png(path: Path, pixels: np.ndarray, color_type: int, transparent: bool = False) -> None:
    """A 16-bit PNG (gray 0, RGB 2, gray+alpha 4, RGBA 6) written by hand: Pillow cannot write most of them.
    ``transparent``: a tRNS chunk naming the first pixel's value (gray and RGB)."""
    height, width = pixels.shape[:2]
    raw = b"".join(b"\0" + pixels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0))
    if transparent:
        header += chunk(b"tRNS", pixels[0, 0].astype(">u2").tobytes())
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize(("variant", "channels"), [
    ("gray", 1), ("gray_alpha", 2), ("rgb", 3), ("rgba", 4), ("gray_trns", 1), ("rgb_trns", 3),
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
        _png(path, pixels if channels > 1 else pixels[:, :, 0], {1: 0, 2: 4, 3: 2, 4: 6}[channels],
             transparent=variant.endswith("trns"))
        assert variant.endswith("trns") == ("transparency" in Image.open(path).info)
    np.testing.assert_array_equal(read_image(path), expected, err_msg=f"{variant}: Pillow mode {Image.open(path).mode}")
    assert not np.array_equal(expected, np.repeat((pixels[:, :, :1] & 0xFF).astype(np.uint8), 3, axis=2))
