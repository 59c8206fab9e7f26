"""The reference-vector builders shared by tests/cpp/make_test_data.py (the C++ ctest data) and the Python tests.

Each ``*_vectors(folder, rng)`` writes raw little-endian arrays (``.u8`` uint8, ``.f32`` float32, via
:func:`write_array`) or files into ``folder`` and returns the cases that ``index.json`` lists;
:func:`write_tiff` is the hand-written TIFF writer for the layouts Pillow cannot write.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

# (height, width, channels, model size): up- and downsampling by integer and fractional factors,
# one-pixel-wide strips, gray / RGB / RGBA, and the identity.
PREPROCESS_CASES = [
    (64, 64, 3, (64, 64)), (224, 224, 3, (64, 64)), (100, 37, 3, (64, 64)), (13, 200, 1, (64, 64)),
    (31, 31, 4, (64, 64)), (1, 90, 3, (32, 48)), (250, 1, 1, (48, 32)), (17, 23, 3, (224, 224)),
    (65, 63, 3, (64, 64)), (512, 384, 3, (224, 224)),
]
# (n_classes, model size, original size)
POSTPROCESS_CASES = [
    (1, (64, 64), (64, 64)), (1, (64, 64), (224, 224)), (1, (64, 64), (37, 101)), (3, (32, 32), (70, 45)),
    (2, (48, 48), (48, 200)),
]
def write_array(folder: Path, name: str, array: np.ndarray) -> str:
    array = np.ascontiguousarray(array)
    suffix = {np.dtype(np.uint8): ".u8", np.dtype(np.float32): ".f32"}[array.dtype]
    (folder / (name + suffix)).write_bytes(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return name + suffix


def preprocess_vectors(folder: Path, rng: np.random.Generator) -> list[dict]:
    from mrdl.data.preprocess import preprocess as training_preprocess
    from mrdl_runtime.imaging import preprocess

    cases = []
    for i, (h, w, c, size) in enumerate(PREPROCESS_CASES):
        image = rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)
        if i % 2:  # smooth content as well as noise: gradients exercise the rounding differently
            ramp = np.linspace(0, 255, h * w * c).reshape(h, w, c)
            image = np.clip(ramp + rng.normal(0, 8, size=ramp.shape), 0, 255).astype(np.uint8)
        tensor = preprocess(image, size)  # (3, H, W)
        if size[0] == size[1]:
            assert np.array_equal(tensor, training_preprocess(image, size[0])), "runtime and training disagree"
        cases.append({"name": f"{h}x{w}x{c}->{size[0]}x{size[1]}", "shape": [h, w, c], "size": list(size),
                      "scale": 1.0 / 255.0, "image": write_array(folder, f"pre_{i:02d}_image", image),
                      "expected": write_array(folder, f"pre_{i:02d}_tensor", tensor)})
    return cases


def postprocess_vectors(folder: Path, rng: np.random.Generator) -> list[dict]:
    from mrdl_runtime.imaging import probabilities_to_mask, resize_probabilities

    cases = []
    for i, (k, model_size, size) in enumerate(POSTPROCESS_CASES):
        logits = rng.normal(0, 2, size=(k, *model_size)).astype(np.float32)
        if k == 1:
            probs = 1 / (1 + np.exp(-logits))
        else:
            probs = np.exp(logits) / np.exp(logits).sum(axis=0, keepdims=True)
        probs = probs.astype(np.float32)  # (K, h, w)
        resized = resize_probabilities(probs, size)  # (K, H, W)
        mask = probabilities_to_mask(resized, threshold=0.5)
        cases.append({"name": f"{k}x{model_size[0]}x{model_size[1]}->{size[0]}x{size[1]}",
                      "n_classes": k, "model_size": list(model_size), "size": list(size), "threshold": 0.5,
                      "probabilities": write_array(folder, f"post_{i:02d}_probs", probs),
                      "expected_probabilities": write_array(folder, f"post_{i:02d}_resized", resized),
                      "expected_mask": write_array(folder, f"post_{i:02d}_mask", mask)})
    return cases


def write_tiff(path: Path, pixels: np.ndarray, *, photometric: int, byte_order: str = "<", tile: int | None = None,
               rows_per_strip: int | None = None, planar: int = 1, deflate: bool = False, predictor: bool = False,
               extra_samples: tuple[int, ...] = (), sample_format: int = 1, jpeg_quality: int | None = None,
               orientation: int | None = None, compress: Callable[[bytes], bytes] = zlib.compress) -> None:
    """A baseline TIFF writer for the layouts Pillow cannot write: tiles, 16-bit RGB(A), big-endian,
    separate planes, deflate with the horizontal predictor, and YCbCr JPEG tiles (``jpeg_quality``:
    each tile a complete 4:2:0 JPEG stream from Pillow, photometric YCbCr, as whole-slide images
    store them), with an Orientation tag when ``orientation`` is given. ``pixels`` is (H, W, C) of
    the sample dtype, as stored. ``compress`` is the deflate step (a test swaps in another codec)."""
    height, width, samples = pixels.shape
    chunks = []  # the strips or tiles in file order (plane by plane when planar == 2)
    for plane in ([slice(None)] if planar == 1 else [slice(s, s + 1) for s in range(samples)]):
        step_y, step_x = (tile, tile) if tile else (rows_per_strip or height, width)
        for y in range(0, height, step_y):
            for x in range(0, width, step_x):
                chunk = np.zeros((step_y, step_x, samples), pixels.dtype) if tile else None
                part = pixels[y:y + step_y, x:x + step_x]
                if tile:  # tiles are stored whole: the edge ones padded
                    chunk[:part.shape[0], :part.shape[1]] = part
                chunk = np.array(part if chunk is None else chunk)[:, :, plane]
                if predictor:  # horizontal differencing, modulo 2**bits
                    chunk[:, 1:] = chunk[:, 1:] - chunk[:, :-1]
                if jpeg_quality is not None:
                    encoded = io.BytesIO()
                    Image.fromarray(chunk).save(encoded, "JPEG", quality=jpeg_quality, subsampling=2)
                    chunks.append(encoded.getvalue())
                    continue
                raw = chunk.astype(pixels.dtype.newbyteorder(byte_order)).tobytes()
                chunks.append(compress(raw) if deflate else raw)
    e = byte_order
    out = bytearray((b"II*\0" if e == "<" else b"MM\0*") + bytes(4))
    offsets = []
    for raw in chunks:
        offsets.append(len(out))
        out += raw + b"\0" * (len(raw) % 2)
    SHORT, LONG = 3, 4
    tags = {256: (LONG, [width]), 257: (LONG, [height]), 258: (SHORT, [pixels.dtype.itemsize * 8] * samples),
            259: (SHORT, [7 if jpeg_quality is not None else 8 if deflate else 1]), 262: (SHORT, [photometric]),
            277: (SHORT, [samples]),
            284: (SHORT, [planar]), 339: (SHORT, [sample_format] * samples)}
    if predictor:
        tags[317] = (SHORT, [2])
    if orientation is not None:
        tags[274] = (SHORT, [orientation])
    if jpeg_quality is not None:
        tags[530] = (SHORT, [2, 2])  # YCbCrSubSampling 4:2:0, what the JPEG streams hold
    if extra_samples:
        tags[338] = (SHORT, list(extra_samples))
    sizes = [len(raw) for raw in chunks]
    if tile:
        tags.update({322: (LONG, [tile]), 323: (LONG, [tile]), 324: (LONG, offsets), 325: (LONG, sizes)})
    else:
        tags.update({273: (LONG, offsets), 278: (LONG, [rows_per_strip or height]), 279: (LONG, sizes)})
    struct.pack_into(e + "I", out, 4, len(out))
    entries, values = bytearray(struct.pack(e + "H", len(tags))), bytearray()
    values_at = len(out) + 2 + 12 * len(tags) + 4
    for tag in sorted(tags):
        kind, items = tags[tag]
        payload = struct.pack(e + ("H" if kind == SHORT else "I") * len(items), *items)
        if len(payload) <= 4:
            entries += struct.pack(e + "HHI", tag, kind, len(items)) + payload.ljust(4, b"\0")
        else:
            entries += struct.pack(e + "HHII", tag, kind, len(items), values_at + len(values))
            values += payload
    path.write_bytes(bytes(out + entries + struct.pack(e + "I", 0) + values))


def tiff_vectors(folder: Path, rng: np.random.Generator) -> list[dict]:
    """TIFF files with what ``mrdl_runtime.imaging.read_image`` (Pillow) decodes them to.

    Pillow writes the strip layouts it can (8/16-bit gray, RGB, RGBA, LA, bilevel, palette, float,
    int32; raw, LZW, deflate, PackBits, JPEG, Group 4); ``_write_tiff`` the rest (tiles, 16-bit
    RGB(A), big-endian, separate planes, deflate with predictor, YCbCr JPEG tiles). Each hand-written file's decoding is also
    checked against ``to_rgb8`` of the array written, so the vectors hold the rule, not a Pillow quirk.
    The Orientation tag: values 1 to 8 on non-square gray and RGB files (strips and tiles, checked
    against Pillow's transpose for each value), on two files Pillow decodes (palette, bilevel), and
    values outside 1..8 (left as stored).
    Cases with an ``error`` are files the C++ reader refuses (the fragment its message contains).
    """
    from mrdl_runtime.imaging import read_image, to_rgb8

    def noise(h, w, c, dtype):
        return rng.integers(0, np.iinfo(dtype).max + 1, size=(h, w, c), dtype=dtype)

    rgb8, rgba8 = noise(37, 45, 3, np.uint8), noise(37, 45, 4, np.uint8)
    rgb16, rgba16, gray16 = noise(35, 40, 3, np.uint16), noise(35, 40, 4, np.uint16), noise(35, 40, 1, np.uint16)
    gray8 = noise(41, 50, 1, np.uint8)
    ramp = np.linspace(0, 255, 70 * 90 * 3).reshape(70, 90, 3)  # smooth: JPEG keeps it close
    smooth = np.clip(ramp + rng.normal(0, 6, size=ramp.shape), 0, 255).astype(np.uint8)
    pillow = [  # name, Pillow image, save keywords
        ("pillow_gray8_raw", Image.fromarray(gray8[:, :, 0]), {}),
        ("pillow_gray8_lzw", Image.fromarray(gray8[:, :, 0]), {"compression": "tiff_lzw"}),
        ("pillow_gray16_deflate", Image.fromarray(gray16[:, :, 0]), {"compression": "tiff_deflate"}),
        ("pillow_gray16_big_endian",  # not convert("I;16B"), which clamps the values to 255
         Image.frombytes("I;16B", gray16.shape[1::-1], gray16[:, :, 0].astype(">u2").tobytes()), {}),
        ("pillow_rgb8_lzw_strips", Image.fromarray(noise(300, 200, 3, np.uint8)), {"compression": "tiff_lzw"}),
        # one uncompressed strip over 8 KiB: libtiff reads it as many virtual strips unless told not to
        ("pillow_rgb8_raw_large", Image.fromarray(noise(300, 200, 3, np.uint8)), {}),
        ("pillow_rgb8_packbits", Image.fromarray(rgb8), {"compression": "packbits"}),
        ("pillow_rgb8_jpeg", Image.fromarray(noise(64, 48, 3, np.uint8)), {"compression": "jpeg", "quality": 90}),
        ("pillow_rgba8_deflate", Image.fromarray(rgba8), {"compression": "tiff_deflate"}),
        ("pillow_la8", Image.fromarray(rgba8[:, :, :2], mode="LA"), {}),
        ("pillow_bilevel_group4", Image.fromarray(gray8[:, :, 0] > 127), {"compression": "group4"}),
        ("pillow_palette", Image.fromarray(rgb8).quantize(37), {}),
        ("pillow_float32", Image.fromarray(rng.random((33, 29), dtype=np.float32)), {}),
        ("pillow_int32", Image.fromarray(rng.integers(0, 65536, (30, 31)).astype(np.int32)), {}),
    ]
    written = [  # name, array written, _write_tiff keywords
        ("rgb8_tiles", rgb8, {"photometric": 2, "tile": 16}),
        ("rgb8_tiles_planar", rgb8, {"photometric": 2, "tile": 16, "planar": 2}),
        ("rgb8_strips_planar", rgb8, {"photometric": 2, "rows_per_strip": 7, "planar": 2}),
        ("rgba8_tiles", rgba8, {"photometric": 2, "tile": 16, "extra_samples": (2,)}),
        ("rgbx8_unspecified_extra", rgba8, {"photometric": 2, "extra_samples": (0,)}),
        ("gray8_tiles_deflate_predictor", gray8, {"photometric": 1, "tile": 16, "deflate": True, "predictor": True}),
        ("gray8_min_is_white", gray8, {"photometric": 0, "rows_per_strip": 10}),
        ("rgb16_strips", rgb16, {"photometric": 2, "rows_per_strip": 8}),
        ("rgb16_strips_big_endian", rgb16, {"photometric": 2, "rows_per_strip": 8, "byte_order": ">"}),
        ("rgb16_tiles_deflate_predictor", rgb16, {"photometric": 2, "tile": 16, "deflate": True, "predictor": True}),
        ("rgb16_tiles_planar_deflate", rgb16, {"photometric": 2, "tile": 16, "planar": 2, "deflate": True}),
        ("rgba16_tiles", rgba16, {"photometric": 2, "tile": 16, "extra_samples": (2,)}),
        ("gray16_tiles_big_endian_deflate", gray16, {"photometric": 1, "tile": 32, "byte_order": ">", "deflate": True}),
        ("ycbcr_jpeg_tiles", smooth, {"photometric": 6, "tile": 32, "jpeg_quality": 90}),
    ]
    refused = [  # name, array, keywords, the C++ reader's message fragment
        ("error_associated_alpha", rgba8, {"photometric": 2, "extra_samples": (1,)}, "associated (premultiplied) alpha"),
        ("error_gray16_min_is_white", gray16, {"photometric": 0}, "min-is-white TIFF with 16-bit samples"),
        ("error_cmyk", rgba8, {"photometric": 5}, "photometric interpretation CMYK"),
        ("error_ycbcr_uncompressed", rgb8, {"photometric": 6}, "YCbCr (other than JPEG-compressed)"),
    ]
    cases = []

    def record(name, path, error=None):
        case = {"name": name, "file": path.name}
        if error is None:
            rgb = read_image(path)
            case.update(height=rgb.shape[0], width=rgb.shape[1], expected=write_array(folder, f"{name}_rgb", rgb))
        else:
            case["error"] = error
        cases.append(case)

    for name, image, options in pillow:
        image.save(folder / f"{name}.tif", **options)
        record(name, folder / f"{name}.tif")
    for name, pixels, options in written:
        write_tiff(folder / f"{name}.tif", pixels, **options)
        record(name, folder / f"{name}.tif")
        source, decoded = 255 - pixels if options["photometric"] == 0 else pixels, read_image(folder / f"{name}.tif")
        if "jpeg_quality" in options:  # lossy: the first tile is what Pillow's own JPEG decoder gives
            side, encoded = options["tile"], io.BytesIO()
            Image.fromarray(source[:side, :side]).save(encoded, "JPEG", quality=options["jpeg_quality"], subsampling=2)
            assert np.array_equal(decoded[:side, :side], np.asarray(Image.open(encoded))), f"{name}: not the JPEG tile"
        else:
            assert np.array_equal(decoded, to_rgb8(source)), f"{name}: Pillow breaks the rule"
    flips = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}  # EXIF / TIFF Orientation -> the transpose that displays it
    for orientation in (0, *range(1, 10)):
        for kind, pixels, photometric in (("gray8", gray8, 1), ("rgb8", rgb8, 2)):
            if orientation in (0, 9) and kind == "gray8":
                continue
            name = f"orientation{orientation}_{kind}"
            layout = {"tile": 16} if orientation % 2 else {"rows_per_strip": 9}
            write_tiff(folder / f"{name}.tif", pixels, photometric=photometric, orientation=orientation, **layout)
            record(name, folder / f"{name}.tif")
            shown = Image.fromarray(to_rgb8(pixels))
            shown = shown.transpose(flips[orientation]) if orientation in flips else shown
            assert np.array_equal(read_image(folder / f"{name}.tif"), np.asarray(shown)), f"{name}: not as displayed"
    for name, image, orientation in (("pillow_palette", Image.fromarray(rgb8).quantize(37), 6),
                                     ("pillow_bilevel_group4", Image.fromarray(gray8[:, :, 0] > 127), 7)):
        image.save(folder / f"{name}_orientation{orientation}.tif", tiffinfo={274: orientation},
                   compression="group4" if image.mode == "1" else None)
        record(f"{name}_orientation{orientation}", folder / f"{name}_orientation{orientation}.tif")
        shown = np.asarray(image.convert("RGB").transpose(flips[orientation]))
        assert np.array_equal(read_image(folder / f"{name}_orientation{orientation}.tif"), shown), name
    for name, pixels, options, error in refused:
        write_tiff(folder / f"{name}.tif", pixels, **options)
        record(name, folder / f"{name}.tif", error)
    truncated = (folder / "pillow_rgb8_lzw_strips.tif").read_bytes()
    (folder / "error_truncated.tif").write_bytes(truncated[:len(truncated) // 2])
    record("error_truncated", folder / "error_truncated.tif", "as a TIFF image: TIFFFetchDirectory")
    damaged = bytearray((folder / "rgb16_tiles_deflate_predictor.tif").read_bytes())
    damaged[8:40] = bytes(range(32))  # inside the first tile's deflate stream
    (folder / "error_damaged_tile.tif").write_bytes(bytes(damaged))
    record("error_damaged_tile", folder / "error_damaged_tile.tif", "as a TIFF image: ZIPDecode")
    huge = bytearray((folder / "rgb8_tiles.tif").read_bytes())  # TileWidth/TileLength patched to 65536
    (ifd,) = struct.unpack_from("<I", huge, 4)
    (count,) = struct.unpack_from("<H", huge, ifd)
    for entry in range(ifd + 2, ifd + 2 + 12 * count, 12):
        if struct.unpack_from("<H", huge, entry)[0] in (322, 323):
            struct.pack_into("<I", huge, entry + 8, 65536)
    (folder / "error_huge_tiles.tif").write_bytes(bytes(huge))
    record("error_huge_tiles", folder / "error_huge_tiles.tif", "the reader takes at most 1073741824 bytes per tile")
    return cases


def integrity_vectors(folder: Path, model_dir: Path, rng: np.random.Generator) -> dict:
    """A blob hashed by hashlib (1000003 bytes: not a whole number of SHA-256 blocks) and two
    variants of model.onnx: another export's (same size, other export_id) and one without its
    embedded manifest."""
    import onnx

    from mrdl_runtime.manifest import METADATA_KEY

    probe = rng.integers(0, 256, size=1_000_003, dtype=np.uint8).tobytes()
    (folder / "hash_probe.bin").write_bytes(probe)
    model = onnx.load(str(model_dir / "model.onnx"))
    entry = next(prop for prop in model.metadata_props if prop.key == METADATA_KEY)
    embedded = json.loads(entry.value)
    other_id = format(int(embedded["export_id"], 16) ^ 1, "032x")  # another export, same length
    entry.value = entry.value.replace(embedded["export_id"], other_id)
    onnx.save_model(model, str(folder / "other_export.onnx"))
    assert (folder / "other_export.onnx").stat().st_size == (model_dir / "model.onnx").stat().st_size
    kept = [prop for prop in model.metadata_props if prop.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save_model(model, str(folder / "no_manifest.onnx"))
    return {"hash_probe": {"file": "hash_probe.bin", "sha256": hashlib.sha256(probe).hexdigest()},
            "other_export": {"file": "other_export.onnx", "export_id": other_id},
            "no_manifest": {"file": "no_manifest.onnx"}}
