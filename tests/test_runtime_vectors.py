"""Shared test vectors for the C++ runtime: images -> model input, probability maps -> masks,
pixel arrays and PNG files -> RGB uint8 (the decoding rule).

Writes ``preprocess.json``, ``postprocess.json`` and ``decode.json`` with its ``decode_*.png`` files
(format: runtime/VECTORS.md) into ``$MRDL_VECTORS_DIR`` when set, else into pytest's tmp_path, after
checking every vector against the training-side reference (``mrdl.data.preprocess``), Pillow
directly, or the decoding rule as docs/deploy-manifest.md words it, so C++ compares with numbers
that Python itself has verified.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FORMAT = "mrdl-runtime-vectors/1"
MODEL_SIZE = (64, 64)  # (height, width), the tiny config's input
SCALE = 1.0 / 255.0
THRESHOLD = 0.5


def _test_image(height: int, width: int, channels: int, seed: int) -> np.ndarray:
    """Noise on a diagonal gradient: sharp detail (tests the filter) and smooth ramps (tests rounding)."""
    rng = np.random.default_rng(seed)
    ramp = np.add.outer(np.linspace(0, 160, height), np.linspace(0, 80, width))[:, :, None]
    image = np.clip(ramp + rng.integers(0, 96, size=(height, width, max(channels, 1))), 0, 255).astype(np.uint8)
    return image[:, :, 0] if channels == 0 else image


def _axis_weights(n_in: int, n_out: int) -> list[tuple[int, np.ndarray]]:
    """Pillow's bilinear weights for one axis (runtime/VECTORS.md): (first source index, weights) per output."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    rows = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        first = max(int(center - filterscale + 0.5), 0)
        last = min(int(center + filterscale + 0.5), n_in)
        taps = np.maximum(0.0, 1.0 - np.abs((np.arange(first, last) - center + 0.5) * (1.0 / filterscale)))
        total = 0.0
        for tap in taps:  # sequential sum, as Pillow
            total += float(tap)
        rows.append((first, taps / total))
    return rows


def _resize_axis(image: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One pass: uint8 with 22-bit fixed-point weights, float32 with double weights."""
    source = np.moveaxis(image, axis, 0)
    out = np.empty((n_out, *source.shape[1:]), image.dtype)
    for i, (first, weights) in enumerate(_axis_weights(source.shape[0], n_out)):
        window = source[first:first + len(weights)]
        if image.dtype == np.uint8:
            fixed = np.trunc(weights * (1 << 22) + np.where(weights < 0, -0.5, 0.5)).astype(np.int64)
            total = (1 << 21) + np.tensordot(fixed, window.astype(np.int64), axes=(0, 0))
            out[i] = np.clip(total >> 22, 0, 255)
        else:
            total = np.zeros(source.shape[1:], np.float64)
            for weight, row in zip(weights, window):
                total = total + row.astype(np.float64) * weight
            out[i] = total.astype(np.float32)
    return np.moveaxis(out, 0, axis)


def documented_resize(image: np.ndarray, size: tuple[int, int], *, vertical_first: bool) -> np.ndarray:
    """The resize runtime/VECTORS.md describes, HxW[xC] uint8 or float32 -> size, in the given pass order."""
    passes = [(size[0], 0), (size[1], 1)] if vertical_first else [(size[1], 1), (size[0], 0)]
    for n_out, axis in passes:
        if image.shape[axis] != n_out:
            image = _resize_axis(image, n_out, axis)
    return image


def pass_order(image: np.ndarray, size: tuple[int, int], pillow: np.ndarray) -> str:
    """Which pass order of :func:`documented_resize` reproduces Pillow's output exactly."""
    horizontal = np.array_equal(documented_resize(image, size, vertical_first=False), pillow)
    vertical = np.array_equal(documented_resize(image, size, vertical_first=True), pillow)
    assert horizontal or vertical, "runtime/VECTORS.md no longer describes Pillow's resize"
    return "either" if horizontal and vertical else "horizontal_first" if horizontal else "vertical_first"


# name, height, width, channels (0 = HxW grayscale)
PREPROCESS_CASES = [
    ("rgb_37x53", 37, 53, 3),
    ("rgb_150x97", 150, 97, 3),
    ("rgb_9x13_upsample", 9, 13, 3),
    ("rgb_120x40_mixed", 120, 40, 3),
    ("rgb_64x64_identity", 64, 64, 3),
    ("gray_45x61", 45, 61, 0),
    ("gray1_23x31", 23, 31, 1),
    ("rgba_21x19", 21, 19, 4),
]


def _probability_map(n_classes: int, seed: int) -> np.ndarray:
    """(C, 64, 64) float32: a sigmoid or softmax of smooth waves plus a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:MODEL_SIZE[0], 0:MODEL_SIZE[1]] / 8.0
    logits = np.stack([3 * np.sin(x * (1 + c) + y * 0.7) * np.cos(y * 0.9 - c) for c in range(n_classes)])
    logits = logits + 0.3 * rng.standard_normal(logits.shape)
    if n_classes == 1:
        return (1 / (1 + np.exp(-logits))).astype(np.float32)
    exp = np.exp(logits - logits.max(axis=0))
    return (exp / exp.sum(axis=0)).astype(np.float32)


# name, n_classes, original (height, width)
POSTPROCESS_CASES = [
    ("sigmoid_to_37x53", 1, (37, 53)),
    ("sigmoid_to_150x97", 1, (150, 97)),
    ("sigmoid_to_64x64_identity", 1, (64, 64)),
    ("softmax3_to_41x29", 3, (41, 29)),
]


def _flat(array: np.ndarray) -> list:
    return array.reshape(-1).tolist()  # float32 -> Python float holds the exact float32 value


def preprocess_vectors() -> dict:
    from mrdl.data.preprocess import preprocess as training_preprocess
    from mrdl_runtime.imaging import check_image, preprocess, resize_rgb

    cases = []
    for index, (name, height, width, channels) in enumerate(PREPROCESS_CASES):
        image = _test_image(height, width, channels, seed=index)
        tensor = preprocess(image, MODEL_SIZE, scale=SCALE)  # (3, 64, 64)
        np.testing.assert_array_equal(tensor, training_preprocess(image, MODEL_SIZE[0]))
        resized = resize_rgb(check_image(image), MODEL_SIZE)  # (64, 64, 3) uint8
        cases.append({"name": name, "height": height, "width": width, "channels": image.shape[2] if image.ndim == 3 else 1,
                      "image": _flat(image), "resized": _flat(resized), "tensor": _flat(tensor),
                      "pass_order": pass_order(check_image(image), MODEL_SIZE, resized)})
    return {"format": FORMAT, "kind": "preprocess", "size": list(MODEL_SIZE), "scale": SCALE, "cases": cases}


def postprocess_vectors() -> dict:
    from mrdl_runtime.imaging import probabilities_to_mask, resize_probabilities

    cases = []
    for index, (name, n_classes, original) in enumerate(POSTPROCESS_CASES):
        probabilities = _probability_map(n_classes, seed=index)
        resized = resize_probabilities(probabilities, original)  # (C, H, W)
        for channel, resized_channel in zip(probabilities, resized):
            direct = Image.fromarray(channel).resize((original[1], original[0]), Image.BILINEAR)
            np.testing.assert_array_equal(resized_channel, np.asarray(direct))
        orders = {pass_order(channel, original, resized_channel)
                  for channel, resized_channel in zip(probabilities, resized)}
        mask = probabilities_to_mask(resized, threshold=THRESHOLD)  # (H, W) uint8
        assert len(np.unique(mask)) == max(n_classes, 2), f"{name}: the mask misses a class"
        cases.append({"name": name, "n_classes": n_classes, "original_size": list(original),
                      "probabilities": _flat(probabilities), "resized_probabilities": _flat(resized),
                      "mask": _flat(mask), "pass_order": orders.pop() if len(orders) == 1 else "mixed"})
    return {"format": FORMAT, "kind": "postprocess", "size": list(MODEL_SIZE), "threshold": THRESHOLD, "cases": cases}


@pytest.fixture
def vectors_dir(tmp_path) -> Path:
    target = os.environ.get("MRDL_VECTORS_DIR")
    return Path(target) if target else tmp_path


def _write_json(doc: dict, path: Path) -> None:
    from mrdl_runtime.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, separators=(",", ":")), encoding="utf-8")


def test_write_preprocess_vectors(vectors_dir):
    doc = preprocess_vectors()
    _write_json(doc, vectors_dir / "preprocess.json")
    back = json.loads((vectors_dir / "preprocess.json").read_text())
    assert back["format"] == FORMAT and len(back["cases"]) == len(PREPROCESS_CASES)
    for case in back["cases"]:
        image = np.array(case["image"], dtype=np.uint8)
        assert image.size == case["height"] * case["width"] * case["channels"]
        tensor = np.array(case["tensor"], dtype=np.float32).reshape(3, *MODEL_SIZE)
        resized = np.array(case["resized"], dtype=np.uint8).reshape(*MODEL_SIZE, 3)
        np.testing.assert_array_equal(tensor, resized.transpose(2, 0, 1).astype(np.float32) * np.float32(SCALE))
    by_name = {c["name"]: c for c in back["cases"]}
    identity = by_name["rgb_64x64_identity"]
    assert identity["image"] == identity["resized"]  # Pillow returns a same-size image unchanged


def test_write_postprocess_vectors(vectors_dir):
    doc = postprocess_vectors()
    _write_json(doc, vectors_dir / "postprocess.json")
    back = json.loads((vectors_dir / "postprocess.json").read_text())
    assert [c["name"] for c in back["cases"]] == [name for name, _, _ in POSTPROCESS_CASES]
    for case, original in zip(back["cases"], doc["cases"]):
        height, width = case["original_size"]
        resized = np.array(case["resized_probabilities"], dtype=np.float32).reshape(case["n_classes"], height, width)
        np.testing.assert_array_equal(resized.reshape(-1), np.array(original["resized_probabilities"], np.float32))
        assert len(case["mask"]) == height * width


def _documented_rule(array: np.ndarray) -> np.ndarray:
    """The decoding rule written out from docs/deploy-manifest.md, as a check on mrdl_runtime's."""
    values = array if array.ndim == 3 else array[:, :, None]
    if values.dtype.kind == "f":
        wide = values.astype(np.float64)
        factor = 255.0 if wide.max() <= 1.0 else 1.0
        values = np.floor(wide * factor + 0.5).astype(np.uint8)
    elif values.dtype != np.uint8:
        values = (values.astype(np.int64) >> 8).astype(np.uint8)
    return np.repeat(values[:, :, :1], 3, axis=2) if values.shape[2] < 3 else values[:, :, :3]


def _array_cases() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(10)
    gray16 = rng.integers(0, 65536, size=(5, 7), dtype=np.uint16)
    gray16[0, :4] = [0, 255, 256, 65535]
    float01 = rng.random((6, 5), dtype=np.float32)
    float01[0] = [0.0, 1.0, 0.5 / 255, 127.5 / 255, 254.5 / 255]  # exact ends and rounding midpoints
    float255 = (rng.random((5, 4, 3)) * 255).astype(np.float32)
    float255[0, 0] = [2.5, 254.5, 0.5]  # half-way values round up
    nan, negative = float01.copy(), float01.copy()
    nan[2, 3], negative[1, 1] = np.nan, -0.25
    return [
        ("gray16_5x7", gray16),
        ("rgb16_4x6x3", rng.integers(0, 65536, size=(4, 6, 3), dtype=np.uint16)),
        ("gray_alpha16_3x5x2", rng.integers(0, 65536, size=(3, 5, 2), dtype=np.uint16)),
        ("rgba16_3x4x4", rng.integers(0, 65536, size=(3, 4, 4), dtype=np.uint16)),
        ("int32_in_16bit_range_4x4", rng.integers(0, 65536, size=(4, 4), dtype=np.int32)),
        ("float01_6x5", float01),
        ("float01_float64_3x3x3", rng.random((3, 3, 3))),
        ("float255_5x4x3", float255),
        ("gray_alpha8_4x3x2", rng.integers(0, 256, size=(4, 3, 2), dtype=np.uint8)),
        ("rgba8_3x3x4", rng.integers(0, 256, size=(3, 3, 4), dtype=np.uint8)),
        ("error_float_nan", nan),
        ("error_float_negative", negative),
        ("error_float_over_255", float255 * 2),
        ("error_int32_out_of_range", np.array([[-1, 70000]], dtype=np.int32)),
    ]


def _png(path: Path, samples: np.ndarray, color_type: int, bit_depth: int, *, palette: np.ndarray | None = None,
         transparency: bytes | None = None) -> None:
    """Write a PNG chunk by chunk: 16-bit RGB(A) and gray+alpha, 1/2/4-bit gray and palettes, tRNS
    (what Pillow cannot write). ``samples``: H x W x channels integers at ``bit_depth``."""
    height, width = samples.shape[:2]
    rows = samples.reshape(height, -1)
    if bit_depth == 16:
        data = rows.astype(">u2").tobytes()
        row_bytes = rows.shape[1] * 2
    elif bit_depth == 8:
        data, row_bytes = rows.astype(np.uint8).tobytes(), rows.shape[1]
    else:  # pack samples MSB first, each row padded to whole bytes
        per_byte = 8 // bit_depth
        padded = np.zeros((height, -(-rows.shape[1] // per_byte) * per_byte), np.uint8)
        padded[:, :rows.shape[1]] = rows
        shifts = np.arange(per_byte - 1, -1, -1) * bit_depth
        data = (padded.reshape(height, -1, per_byte) << shifts).sum(axis=2).astype(np.uint8).tobytes()
        row_bytes = padded.shape[1] // per_byte
    raw = b"".join(b"\0" + data[y * row_bytes:(y + 1) * row_bytes] for y in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    parts = [chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))]
    if palette is not None:
        parts.append(chunk(b"PLTE", palette.astype(np.uint8).tobytes()))
    if transparency is not None:
        parts.append(chunk(b"tRNS", transparency))
    parts += [chunk(b"IDAT", zlib.compress(raw)), chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(parts))


def _png_cases(folder: Path) -> list[tuple[str, np.ndarray]]:
    """Write the PNG files; return (file name, the RGB the rule gives for its samples)."""
    rng = np.random.default_rng(11)
    h, w = 7, 13  # odd width: low-bit rows end in a partial byte
    cases = []

    def add(name: str, samples: np.ndarray, color_type: int, bit_depth: int, expected: np.ndarray, **extra) -> None:
        _png(folder / name, samples, color_type, bit_depth, **extra)
        cases.append((name, expected))

    for depth in (1, 2, 4):
        gray = rng.integers(0, 1 << depth, size=(h, w), dtype=np.uint16)
        scaled = (gray * (255 // ((1 << depth) - 1))).astype(np.uint8)  # bit replication: 0..2^d-1 -> 0..255
        add(f"decode_gray{depth}.png", gray, 0, depth, _documented_rule(scaled))
    gray16 = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
    add("decode_gray16_trns.png", gray16, 0, 16, _documented_rule(gray16),
        transparency=struct.pack(">H", int(gray16[0, 0])))
    gray8 = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    add("decode_gray8_trns.png", gray8, 0, 8, _documented_rule(gray8),
        transparency=struct.pack(">H", int(gray8[0, 0])))
    for name, channels, color_type in (("gray_alpha16", 2, 4), ("rgb16", 3, 2), ("rgba16", 4, 6)):
        samples = rng.integers(0, 65536, size=(h, w, channels), dtype=np.uint16)
        add(f"decode_{name}.png", samples, color_type, 16, _documented_rule(samples))
    for depth in (4, 8):
        palette = rng.integers(0, 256, size=(1 << depth, 3), dtype=np.uint8)
        index = rng.integers(0, 1 << depth, size=(h, w), dtype=np.uint8)
        alpha = bytes(rng.integers(0, 256, size=5, dtype=np.uint8))
        add(f"decode_palette{depth}_trns.png", index, 3, depth, palette[index], palette=palette, transparency=alpha)
    pillow16 = rng.integers(0, 65536, size=(h, w), dtype=np.uint16)
    Image.fromarray(pillow16).save(folder / "decode_gray16_pillow.png")  # Pillow's own 16-bit writer
    cases.append(("decode_gray16_pillow.png", _documented_rule(pillow16)))
    for mode, channels in (("LA", 2), ("RGBA", 4), ("RGB", 3)):
        samples = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
        Image.fromarray(samples, mode).save(folder / f"decode_{mode.lower()}8_pillow.png")
        cases.append((f"decode_{mode.lower()}8_pillow.png", _documented_rule(samples)))
    return cases


def decode_vectors(folder: Path) -> dict:
    from mrdl_runtime.imaging import ImageInputError, read_image, to_rgb8

    arrays = []
    for name, array in _array_cases():
        case = {"name": name, "dtype": str(array.dtype), "shape": list(array.shape),
                "values": [v if np.isfinite(v) else str(v) for v in _flat(array)]}  # JSON has no NaN: "nan"
        if name.startswith("error_"):
            with pytest.raises(ImageInputError) as error:
                to_rgb8(array)
            case["error"] = str(error.value)
        else:
            rgb = to_rgb8(array)
            np.testing.assert_array_equal(rgb, _documented_rule(array), err_msg=name)
            case["rgb"] = _flat(rgb)
        arrays.append(case)
    files = []
    for name, expected in _png_cases(folder):
        rgb = read_image(folder / name)
        np.testing.assert_array_equal(rgb, expected, err_msg=name)
        files.append({"name": name, "file": name, "height": rgb.shape[0], "width": rgb.shape[1], "rgb": _flat(rgb)})
    return {"format": FORMAT, "kind": "decode", "arrays": arrays, "files": files}


def test_write_decode_vectors(vectors_dir):
    doc = decode_vectors(vectors_dir)
    _write_json(doc, vectors_dir / "decode.json")
    back = json.loads((vectors_dir / "decode.json").read_text())
    assert {c["dtype"] for c in back["arrays"]} >= {"uint8", "uint16", "int32", "float32", "float64"}
    errors = {c["name"]: c["error"] for c in back["arrays"] if "error" in c}
    assert "NaN or infinite" in errors["error_float_nan"] and "down to -0.25" in errors["error_float_negative"]
    for case in back["files"]:
        assert (vectors_dir / case["file"]).is_file() and len(case["rgb"]) == case["height"] * case["width"] * 3


# ----------------------------------------------------------------------------- tiling (docs/tiling.md)

# name, image (height, width), source_size, n_classes, overlap, blend, max_batch
TILING_CASES = [
    ("rgb_150x130_source60_gaussian", (150, 130), (60, 60), 1, 0.25, "gaussian", 3),
    ("rgb_80x300_padded_constant_2class", (80, 300), (100, 100), 2, 0.5, "constant", 4),
    ("rgb_120x77_source37x41_gaussian", (120, 77), (37, 41), 1, 0.1, "gaussian", 16),
]
TILING_AUTO = [((1500, 1500), (1000, 1000)), ((1501, 1000), (1000, 1000)), ((1000, 1501), (1000, 1000)),
               ((20000, 20000), (1000, 1000)), ((151, 10), (100, 100)), ((150, 150), (100, 100))]
TILING_SIZES = [((1000, 1000), (1000, 1000), (224, 224)), ((4000, 20000), (1000, 1000), (224, 224)),
                ((1001, 1003), (1000, 1000), (224, 224)), ((2, 1), (1000, 1000), (224, 224)),
                ((80, 300), (100, 100), (64, 64)), ((120, 77), (37, 41), (64, 64)), ((333, 333), (250, 250), (64, 64))]
TILING_WINDOWS = [(896, 224, 0.25), (4480, 224, 0.25), (224, 224, 0.25), (100, 64, 0.0), (70, 64, 0.999),
                  (300, 64, 0.25), (1000, 96, 0.5), (65, 64, 0.9), (160, 64, 0.25), (208, 64, 0.1)]


def _vignette(side: int) -> np.ndarray:
    """The fake model's per-axis factor, float32: 1 - 0.5 * |2i - (side - 1)| / (side - 1) in double."""
    return np.array([1.0 - 0.5 * abs(2 * i - (side - 1)) / max(side - 1, 1) for i in range(side)], dtype=np.float32)


def fake_model(batch: np.ndarray, n_classes: int) -> np.ndarray:
    """(B, 3, mh, mw) float32 -> (B, C, mh, mw): class c is channel c % 3 times the row vignette, then
    times the column vignette, each product rounded to float32 (runtime/VECTORS.md)."""
    rows, cols = _vignette(batch.shape[2]), _vignette(batch.shape[3])
    channels = batch[:, [c % 3 for c in range(n_classes)]]
    return (channels * rows[:, None]) * cols[None, :]


def _reference_stitch(image: np.ndarray, source: tuple[int, int], classes: int, overlap: float, blend: str,
                      max_batch: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """docs/tiling.md sections 3-9 written out again, plainly, on the documented resize."""
    height, width = image.shape[:2]
    size = tuple(max(1, (2 * n * 64 + s) // (2 * s)) for n, s in zip((height, width), source))
    resampled = documented_resize(image, size, vertical_first=False)
    padded = np.zeros((max(size[0], 64), max(size[1], 64), 3), np.uint8)
    padded[:size[0], :size[1]] = resampled

    def starts(length: int) -> list[int]:
        stride = max(1, int(np.floor(64 * (1.0 - overlap))))
        count = 1 if length == 64 else -(-(length - 64) // stride) + 1
        return [min(i * stride, length - 64) for i in range(count)]

    windows = [(y, x) for y in starts(padded.shape[0]) for x in starts(padded.shape[1])]
    if blend == "constant":
        weights = np.ones((64, 64), np.float32)
    else:
        g = np.array([np.exp(-((i - 31.5) ** 2) / (2 * 8.0 ** 2)) for i in range(64)])
        weights = np.outer(g, g).astype(np.float32)
    num = np.zeros((classes, *padded.shape[:2]), np.float32)
    den = np.zeros(padded.shape[:2], np.float32)
    for begin in range(0, len(windows), max_batch):
        chunk = windows[begin:begin + max_batch]
        batch = np.stack([padded[y:y + 64, x:x + 64].transpose(2, 0, 1).astype(np.float32) * np.float32(SCALE)
                          for y, x in chunk])
        for (y, x), out in zip(chunk, fake_model(batch, classes)):
            for c in range(classes):
                num[c, y:y + 64, x:x + 64] += weights * out[c]
            den[y:y + 64, x:x + 64] += weights
    return (num / den)[:, :size[0], :size[1]], windows


def tiling_vectors() -> dict:
    from mrdl_runtime.imaging import probabilities_to_mask
    from mrdl_runtime.resample import resample_rgb
    from mrdl_runtime.tiling import (TileOptions, blend_weights, mask_at, plan_tiles, probabilities_at, resampled_size,
                                     should_tile, stitch, window_starts)

    cases = []
    for index, (name, (height, width), source, classes, overlap, blend, max_batch) in enumerate(TILING_CASES):
        image = _test_image(height, width, 3, seed=100 + index)
        plan = plan_tiles((height, width), source, MODEL_SIZE, overlap)
        resampled = resample_rgb(image, plan.resampled_size)
        np.testing.assert_array_equal(resampled, documented_resize(image, plan.resampled_size, vertical_first=False))
        stitched = stitch(resampled, plan, lambda batch: fake_model(batch, classes), model_size=MODEL_SIZE,
                          n_classes=classes, max_batch=max_batch, scale=SCALE,
                          options=TileOptions(True, overlap, blend))
        reference, windows = _reference_stitch(image, source, classes, overlap, blend, max_batch)
        assert list(plan.windows) == windows
        np.testing.assert_allclose(stitched, reference, rtol=0, atol=2e-7)
        probabilities = probabilities_at(stitched, (height, width))
        for channel, resized in zip(stitched, probabilities):
            np.testing.assert_array_equal(resized, documented_resize(np.ascontiguousarray(channel), (height, width),
                                                                     vertical_first=False))
        mask = probabilities_to_mask(probabilities, threshold=THRESHOLD)
        np.testing.assert_array_equal(mask, mask_at(stitched, (height, width), threshold=THRESHOLD))
        assert len(np.unique(mask)) == max(classes, 2), f"{name}: the mask misses a class"
        cases.append({"name": name, "height": height, "width": width, "image": _flat(image),
                      "source_size": list(source), "n_classes": classes, "overlap": overlap, "blend": blend,
                      "max_batch": max_batch, "resampled_size": list(plan.resampled_size),
                      "padded_size": list(plan.padded_size), "windows": [list(w) for w in plan.windows],
                      "resampled": _flat(resampled), "stitched": _flat(stitched),
                      "probabilities": _flat(probabilities), "mask": _flat(mask)})
    return {
        "format": FORMAT, "kind": "tiling", "size": list(MODEL_SIZE), "scale": SCALE, "threshold": THRESHOLD,
        "auto": [{"image_size": list(image), "source_size": list(source), "tile": should_tile(image, source, "auto")}
                 for image, source in TILING_AUTO],
        "resampled_sizes": [{"image_size": list(image), "source_size": list(source), "model_size": list(model),
                             "resampled_size": list(resampled_size(image, source, model))}
                            for image, source, model in TILING_SIZES],
        "window_starts": [{"length": length, "window": window, "overlap": overlap,
                           "starts": window_starts(length, window, overlap)}
                          for length, window, overlap in TILING_WINDOWS],
        "weights": [{"model_size": list(size), "blend": blend, "weights": _flat(blend_weights(size, blend))}
                    for size, blend in [((64, 64), "gaussian"), ((64, 48), "gaussian"), ((224, 224), "gaussian"),
                                        ((7, 5), "gaussian"), ((64, 48), "constant")]],
        "cases": cases,
    }


def test_write_tiling_vectors(vectors_dir):
    doc = tiling_vectors()
    _write_json(doc, vectors_dir / "tiling.json")
    back = json.loads((vectors_dir / "tiling.json").read_text())
    assert [c["name"] for c in back["cases"]] == [c[0] for c in TILING_CASES]
    assert [a["tile"] for a in back["auto"]] == [False, True, True, True, True, False]
    assert {tuple(s["resampled_size"]) for s in back["resampled_sizes"]} >= {(224, 224), (896, 4480), (224, 225)}
    starts = {(w["length"], w["window"], w["overlap"]): w["starts"] for w in back["window_starts"]}
    assert starts[(896, 224, 0.25)] == [0, 168, 336, 504, 672] and len(starts[(4480, 224, 0.25)]) == 27
    for case in back["cases"]:
        height, width = case["resampled_size"]
        assert len(case["resampled"]) == height * width * 3 and len(case["mask"]) == case["height"] * case["width"]
        stitched = np.array(case["stitched"], np.float32).reshape(case["n_classes"], height, width)
        assert np.isfinite(stitched).all() and 0 <= stitched.min() and stitched.max() <= 1
