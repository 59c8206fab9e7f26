"""TIFF layouts for :func:`mrdl_runtime.imaging.read_image`: checked from the tags, then decoded by the rule.

Pillow's TIFF reader turns some layouts into plausible but wrong pixels (found by decoding every
combination of photometric, sample type, extra samples, planar configuration, compression and byte
order against the rule; tests/test_tiff_decode.py): its own uncompressed reader mis-reads separate
planes (16-bit RGB gets bytes of the wrong samples, min-is-white planes stay uninverted), its libtiff
reader leaves big-endian signed and float samples byte-swapped, and it reads signed 8-bit as
unsigned, 16-bit and float min-is-white uninverted, un-premultiplies associated alpha and converts
YCbCr, CMYK and CIELab by its own formulas.

So the first image's tags are read first (:func:`read_tags`, no pixel data) and the layout is
accepted or refused exactly as the C++ reader (runtime/cpp/src/imageio/tiff.cpp) does, in its words
(:func:`check_layout`). Every accepted layout of 8 bits or more but palette and JPEG is then decoded
here (:func:`read_samples`) as the C++ reader does it: libtiff (through Pillow, on an 8-bit gray
TIFF made of the file's strips or tiles) or zlib only decompresses, and this module places the
samples (strips or tiles, separate planes, byte order, predictors, min-is-white). JPEG, palette
and 1/2/4-bit files go to Pillow (through libtiff; Pillow's own uncompressed reader mis-reads
separate planes). The Orientation tag is applied as Pillow applies it on loading a TIFF
(:func:`oriented`).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, TiffImagePlugin

from .errors import MrdlError

SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # TIFF and BigTIFF, either byte order
PILLOW_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "I;16", "I;16B", "I", "F")  # what accepted layouts give
MAX_CHUNK_BYTES = 1 << 30  # one decoded strip or tile, at most 1 GiB (as the C++ reader)
# A compressed strip or tile holds at most COMPRESSED_FACTOR x its decoded bytes + COMPRESSED_SLACK
# (runtime/VECTORS.md, "TIFF byte bounds"): no TIFF codec expands data that much (LZW at most 1.5x).
COMPRESSED_FACTOR, COMPRESSED_SLACK = 4, 1024
_PHOTOMETRIC = {4: "transparency mask", 5: "CMYK (separated)", 6: "YCbCr (other than JPEG-compressed)", 8: "CIELab"}
_EXPECTED = "; the Python reader takes gray, RGB or palette TIFFs (convert the file, e.g. to RGB)"
_DEFLATE = (8, 32946)  # Adobe and old-style deflate codes
_PREDICTED = (5, 8, 32946, 34925, 50000)  # LZW, deflate, LZMA, ZSTD: the codecs libtiff applies a Predictor to
_JPEG = (6, 7)  # old- and new-style JPEG: Pillow (libjpeg's YCbCr -> RGB, as the C++ reader)
PILLOW_GLOBALS = threading.Lock()  # Image.MAX_IMAGE_PIXELS and TiffImagePlugin.READ_LIBTIFF are process-global


class TiffLayoutError(MrdlError, ValueError):
    """A TIFF whose layout is refused (named with what the file holds and what is supported)."""


class Layout(NamedTuple):
    width: int
    height: int
    photometric: int  # 0 min-is-white, 1 min-is-black, 2 RGB (JPEG YCbCr included), 3 palette
    color: int  # colour samples: 1 (gray, palette) or 3 (RGB)
    alpha: bool  # the sample after them is unassociated alpha (kept for the value rule, as in C++)
    bits: int
    sample_format: int  # 1 unsigned, 2 signed, 3 float
    samples: int
    planar: int  # 1 contiguous, 2 separate planes
    compression: int
    predictor: int
    big_endian: bool
    orientation: int = 1  # the Orientation tag as stored (applied by :func:`oriented` or Pillow)


def read_tags(path: Path) -> TiffImagePlugin.ImageFileDirectory_v2 | None:
    """The first image's tags of a TIFF / BigTIFF file (None without a TIFF signature); no pixel data read.
    ``file_size`` is set on the result: :func:`check_layout` bounds the strips and tiles by it."""
    with open(path, "rb") as file:
        head = file.read(8)
        if head[:4] not in SIGNATURES:
            return None
        if head[2] == 43:  # BigTIFF: a 16-byte header
            head += file.read(8)
        tags = TiffImagePlugin.ImageFileDirectory_v2(head)
        file.seek(tags.next)
        tags.load(file)
        tags.file_size = os.fstat(file.fileno()).st_size  # what the strips and tiles must fit in (chunk_reads)
    if 256 not in tags or 257 not in tags:
        raise TiffLayoutError("TIFF whose first directory is missing or truncated (no ImageWidth / ImageLength)")
    return tags


def _first(value, default: int) -> int:
    return value[0] if isinstance(value, tuple) and value else default if value is None else value


def _tuple(value) -> tuple:
    return value if isinstance(value, tuple) else () if value is None else (value,)


def describe(tags: TiffImagePlugin.ImageFileDirectory_v2) -> str:
    """The layout the tags describe, in words, for errors."""
    kind = {1: "unsigned", 2: "signed", 3: "float"}.get(_first(tags.get(339), 1), "other")
    photometric = {0: "min-is-white", 1: "gray", 2: "RGB", 3: "palette"}.get(tags.get(262), "other")
    return (f"{photometric}, {tags.get(277, 1)} samples per pixel of {_first(tags.get(258), 1)}-bit {kind}, "
            f"extra samples {_tuple(tags.get(338))}, "
            f"{'separate planes' if tags.get(284, 1) == 2 else 'contiguous'}, "
            f"{'big' if tags.prefix == b'MM' else 'little'}-endian, compression {tags.get(259, 1)}")


def check_layout(tags: TiffImagePlugin.ImageFileDirectory_v2) -> Layout:
    """The layout, checked the way the C++ reader checks it (same refusals, same wording)."""
    if 262 not in tags:
        raise TiffLayoutError("TIFF without a PhotometricInterpretation tag; expected gray, RGB or palette")
    photometric, compression = tags[262], tags.get(259, 1)
    bits, sample_format = _first(tags.get(258), 1), _first(tags.get(339), 1)
    samples, planar, extra = tags.get(277, 1), tags.get(284, 1), _tuple(tags.get(338))
    if photometric == 6 and compression == 7:  # JPEG YCbCr (whole-slide images): libjpeg's RGB, as C++
        photometric = 2
    if photometric not in (0, 1, 2, 3):
        raise TiffLayoutError(f"TIFF photometric interpretation {_PHOTOMETRIC.get(photometric, f'code {photometric}')}"
                              + _EXPECTED)
    color = 3 if photometric == 2 else 1
    if samples < color:
        raise TiffLayoutError(f"TIFF with {samples} samples per pixel for {color} colour channels")
    alpha = False
    if photometric != 3 and samples > color and extra:
        if extra[0] == 1:
            raise TiffLayoutError("TIFF with associated (premultiplied) alpha; the Python reader takes unassociated "
                                  "alpha only (save the image without alpha or with plain alpha)")
        alpha = extra[0] == 2
    elif photometric == 2 and samples == 4:
        alpha = True  # RGBA without an ExtraSamples tag: alpha, as Pillow and the C++ reader read it
    if len(set(_tuple(tags.get(258)) or (bits,))) > 1:
        raise TiffLayoutError(f"TIFF with samples of different sizes {tags[258]} bits; expected one size")
    if not ((sample_format == 1 and bits in (1, 2, 4, 8, 16, 32)) or (sample_format == 2 and bits in (16, 32))
            or (sample_format == 3 and bits in (32, 64))):
        kind = {1: "unsigned", 2: "signed", 3: "float"}.get(sample_format, f"sample format {sample_format}")
        raise TiffLayoutError(f"TIFF with {bits}-bit {kind} samples; expected unsigned 1/2/4/8/16/32-bit, "
                              "signed 16/32-bit or 32/64-bit float")
    if photometric == 3 and (sample_format != 1 or bits > 8):
        raise TiffLayoutError(f"palette TIFF with {bits}-bit indices; expected 1 to 8 bits")
    if photometric == 0 and not (sample_format == 1 and bits <= 8):
        raise TiffLayoutError(f"min-is-white TIFF with {bits}-bit samples; the Python reader inverts 1- to 8-bit "
                              "min-is-white only (Pillow leaves deeper ones uninverted); save it as min-is-black")
    if bits < 8 and samples != 1:
        raise TiffLayoutError(f"TIFF with {samples} samples of {bits} bits; expected 1 sample per pixel below 8 bits")
    tiled = 322 in tags
    chunk_pixels = (tags[322] * tags.get(323, 0) if tiled
                    else tags[256] * min(tags.get(278, tags[257]), tags[257]))
    chunk_bytes = chunk_pixels * (1 if planar == 2 else samples) * bits // 8
    if chunk_bytes > MAX_CHUNK_BYTES:  # a hostile header must not allocate gigabytes, in either decoder
        raise TiffLayoutError(f"TIFF {'tiles' if tiled else 'strips'} of {chunk_bytes} bytes; the reader takes at "
                              f"most {MAX_CHUNK_BYTES} bytes per tile or strip")
    predictor = tags.get(317, 1) if compression in _PREDICTED else 1  # libtiff ignores it for the others
    layout = Layout(tags[256], tags[257], photometric, color, alpha, bits, sample_format, samples, planar,
                    compression, predictor, tags.prefix == b"MM", tags.get(274, 1))
    chunk_reads(tags, layout)  # the byte bounds, before any decoder reads a strip or tile
    return layout


def decoded_here(layout: Layout) -> bool:
    """Whether :func:`read_samples` decodes the layout: 8 bits or more, not palette, not JPEG, no
    predictor, the horizontal one for integers or the floating-point one for floats."""
    return (layout.compression not in _JPEG and layout.bits >= 8 and layout.photometric != 3
            and (layout.predictor == 1 or (layout.predictor == 2) == (layout.sample_format != 3)))


@contextlib.contextmanager
def without_bomb_check(pixels: int):
    """Pillow's decompression-bomb check (Image.MAX_IMAGE_PIXELS, process-global) off for an image of
    ``pixels`` pixels, whose limit is ``max_pixels``: under the lock only when the image is over it
    (a smaller one passes the check whatever the other threads do)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or pixels <= limit:
        yield
        return
    with PILLOW_GLOBALS:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _strips_file(chunks: list[bytes], rows: list[int], compression: int, fill_order: int, row_bytes: int) -> bytes:
    """An 8-bit gray TIFF whose strips are the given compressed strips or tiles, one under the other
    (``row_bytes`` bytes a row; every one of ``rows[0]`` rows but the last): libtiff, through Pillow,
    decompresses them to bytes without interpreting the samples."""
    offsets, at = [], 0
    for chunk in chunks:
        offsets.append(at)
        at += len(chunk)
    tags = [(256, [row_bytes]), (257, [sum(rows)]), (258, [8]), (259, [compression]), (262, [1]), (266, [fill_order]),
            (273, offsets), (277, [1]), (278, [rows[0]]), (279, [len(chunk) for chunk in chunks])]
    values_at = 8 + 2 + 12 * len(tags) + 4
    data_at = values_at + 4 * sum(len(items) for _, items in tags if len(items) > 1)
    entries, values = bytearray(struct.pack("<H", len(tags))), bytearray()
    for tag, items in tags:
        items = [data_at + item for item in items] if tag == 273 else items
        if len(items) == 1:
            entries += struct.pack("<HHII", tag, 4, 1, items[0])
        else:
            entries += struct.pack("<HHII", tag, 4, len(items), values_at + len(values))
            values += struct.pack(f"<{len(items)}I", *items)
    return b"II*\0" + struct.pack("<I", 8) + bytes(entries) + bytes(4) + bytes(values) + b"".join(chunks)


def _decompressed(chunks: list[bytes], rows: list[int], layout: Layout, fill_order: int, row_bytes: int,
                  plane: int) -> list:
    """The strips or tiles of one plane decompressed, each bytes-like (deflate by zlib, chunk by chunk; the
    other codecs by libtiff, all at once)."""
    where = f" of plane {plane}" if layout.planar == 2 else ""
    what = f"TIFF strips / tiles{where} (compression {layout.compression})"
    try:
        if layout.compression in _DEFLATE:
            return [zlib.decompressobj().decompress(chunk, count * row_bytes) for chunk, count in zip(chunks, rows)]
        if len(chunks) >= 1 << 20 or sum(rows) * row_bytes >= 1 << 34:
            raise TiffLayoutError(f"{what}: {len(chunks)} strips / tiles, too many for the Python reader")
        file = io.BytesIO(_strips_file(chunks, rows, layout.compression, fill_order, row_bytes))
        with without_bomb_check(sum(rows) * row_bytes):
            with Image.open(file) as gray:
                gray.load()
        decoded, starts = np.asarray(gray, dtype=np.uint8), np.cumsum([0, *rows])
        return [decoded[start:stop].reshape(-1) for start, stop in zip(starts[:-1], starts[1:])]
    except (zlib.error, OSError, ValueError, KeyError, SyntaxError) as exc:  # KeyError: a codec unknown to Pillow
        raise TiffLayoutError(f"{what} cannot be decoded ({type(exc).__name__}: {exc})") from exc


def pillow_libtiff(layout: Layout) -> bool:
    """For a layout Pillow decodes (JPEG, palette, 1/2/4-bit, float with the floating-point predictor):
    through libtiff (True) or Pillow's own uncompressed reader (False), which mis-reads separate planes
    and, for the transposing orientations 5 to 8, 8-bit and palette files (their pixels neither stored
    nor displayed)."""
    libtiff = layout.compression != 1 or layout.planar == 2 or layout.orientation in (5, 6, 7, 8)
    if libtiff and layout.big_endian and layout.sample_format in (2, 3) and layout.bits in (16, 32):
        kind = "float" if layout.sample_format == 3 else "signed"
        raise TiffLayoutError(f"big-endian TIFF with {layout.bits}-bit {kind} samples and predictor "
                              f"{layout.predictor}: Pillow's libtiff reader leaves them byte-swapped; save it "
                              "little-endian or without the floating-point predictor")
    return libtiff


def oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as stored -> as displayed by the Orientation tag, as Pillow applies it on loading a TIFF
    (ImageOps.exif_transpose). A view."""
    flips = {2: pixels[:, ::-1], 3: pixels[::-1, ::-1], 4: pixels[::-1], 5: pixels.swapaxes(0, 1),
             6: pixels[::-1].swapaxes(0, 1), 7: pixels[::-1, ::-1].swapaxes(0, 1), 8: pixels[:, ::-1].swapaxes(0, 1)}
    return flips.get(orientation, pixels)


def _chunks(tags: TiffImagePlugin.ImageFileDirectory_v2, layout: Layout):
    """(chunk width, chunk height, offsets, byte counts) of the strips or tiles."""
    tiled = 322 in tags
    if tiled:
        width, height, offsets, sizes = tags[322], tags[323], tags.get(324), tags.get(325)
    else:
        width, height = layout.width, min(tags.get(278, layout.height), layout.height)
        offsets, sizes = tags.get(273), tags.get(279)
    offsets, sizes = _tuple(offsets), _tuple(sizes)
    if not (width and height and offsets and len(offsets) == len(sizes)):
        raise TiffLayoutError("TIFF with empty or missing tiles / strips")
    return width, height, offsets, sizes


def chunk_reads(tags: TiffImagePlugin.ImageFileDirectory_v2, layout: Layout) -> list[tuple[int, int]]:
    """(offset, bytes to read) of every strip or tile the image uses, in StripOffsets / TileOffsets
    order (plane by plane; the colour and alpha planes only when planes are separate), once the byte
    bounds of runtime/VECTORS.md ("TIFF byte bounds") hold; the C++ reader checks the same.

    Chunk ``i`` (offset ``o``, byte count ``n``, ``d`` bytes once decoded) lies inside the file
    (``o + n`` at most its size: a byte count of 2**63 is refused here, not by ``read``), holds at most
    ``4 d + 1024`` bytes when compressed, and is read for at most ``d`` bytes when not. Repeated or
    overlapping chunks therefore cost no more than distinct ones: what is read is bounded by four times
    the decoded image and by the file, whatever the tags say.
    """
    chunk_width, chunk_height, offsets, sizes = _chunks(tags, layout)
    planes = layout.color + layout.alpha if layout.planar == 2 else 1
    per_pixel = 1 if layout.planar == 2 else layout.samples
    row_bytes = (chunk_width * per_pixel * layout.bits + 7) // 8
    across, down = -(-layout.width // chunk_width), -(-layout.height // chunk_height)
    tiled, compressed, file_size = 322 in tags, layout.compression != 1, tags.file_size
    reads = []
    for plane in range(planes):
        if (plane + 1) * down * across > len(offsets):
            raise TiffLayoutError(f"TIFF with {len(offsets)} tiles / strips; expected at least "
                                  f"{(plane + 1) * down * across}")
        for k in range(down * across):
            index = plane * down * across + k
            offset, count = offsets[index], sizes[index]
            rows = chunk_height if tiled else min(chunk_height, layout.height - (k // across) * chunk_height)
            decoded = rows * row_bytes
            if offset + count > file_size:
                raise TiffLayoutError(f"TIFF tile or strip {index} is truncated: {count} bytes at offset {offset} go "
                                      f"past the end of the file ({file_size} bytes)")
            if compressed and count > COMPRESSED_FACTOR * decoded + COMPRESSED_SLACK:
                raise TiffLayoutError(f"TIFF tile or strip {index} holds {count} compressed bytes for {decoded} "
                                      f"decoded bytes; expected at most {COMPRESSED_FACTOR * decoded + COMPRESSED_SLACK}")
            reads.append((offset, count if compressed else min(count, decoded)))
    return reads


def read_samples(path: Path, tags: TiffImagePlugin.ImageFileDirectory_v2, layout: Layout) -> np.ndarray:
    """The samples of a TIFF of 8 bits or more, not JPEG (strips or tiles, either planar configuration
    and byte order, horizontal predictor; libtiff decompresses, this places the samples as the C++
    reader does), as stored (H, W, kept), kept = colour samples (+ alpha):
    8- and 16-bit as uint8 by the rule chunk by chunk (min-is-white inverted), wider types as they
    are (the rule needs their range)."""
    height, width, color, kept = layout.height, layout.width, layout.color, layout.color + layout.alpha
    stored = np.dtype({1: "u", 2: "i", 3: "f"}[layout.sample_format] + str(layout.bits // 8))
    stored = stored.newbyteorder(">" if layout.big_endian else "<")
    native = stored.newbyteorder("=")
    chunk_width, chunk_height, _, _ = _chunks(tags, layout)
    per_pixel = 1 if layout.planar == 2 else layout.samples
    row_bytes, tiled, fill_order = chunk_width * per_pixel * stored.itemsize, 322 in tags, tags.get(266, 1)
    as_bytes = stored.kind == "u" and stored.itemsize <= 2
    out = np.empty((height, width, kept), np.uint8 if as_bytes else native)
    across, down = -(-width // chunk_width), -(-height // chunk_height)
    reads = chunk_reads(tags, layout)
    with open(path, "rb") as file:
        for plane in range(kept if layout.planar == 2 else 1):
            first, last = plane * down * across, (plane + 1) * down * across
            chunks, read_once = [], {}  # an exact repeat (offset, count) is read once
            for offset, count in reads[first:last]:
                if (offset, count) not in read_once:
                    file.seek(offset)
                    read_once[offset, count] = file.read(count)
                chunks.append(read_once[offset, count])
            rows_of = [chunk_height if tiled else min(chunk_height, height - (index // across) * chunk_height)
                       for index in range(down * across)]
            if layout.compression != 1:
                chunks = _decompressed(chunks, rows_of, layout, fill_order, row_bytes, plane)
            pieces = []  # (first tile or strip, y0, x0, rows, columns, bytes)
            if tiled:
                for k, data in enumerate(chunks):
                    y0, x0 = (k // across) * chunk_height, (k % across) * chunk_width
                    rows, columns = min(chunk_height, height - y0), min(chunk_width, width - x0)
                    pieces.append((first + k, y0, x0, rows, columns, data))
            else:  # strips: checked, then placed in groups of about 16 MB (strip by strip, Python's work dominated)
                group, y0, y = [], 0, 0
                for k, (data, count) in enumerate(zip(chunks, rows_of)):
                    if len(data) < count * row_bytes:
                        raise TiffLayoutError(f"TIFF tile or strip {first + k} is truncated")
                    group.append(memoryview(data)[:count * row_bytes])
                    y += count
                    if (y - y0) * row_bytes >= 1 << 24 or k == len(chunks) - 1:
                        pieces.append((first + k, y0, 0, y - y0, width, b"".join(group)))
                        group, y0 = [], y
            for index, y0, x0, rows, columns, data in pieces:
                if len(data) < ((rows - 1) * chunk_width + columns) * per_pixel * stored.itemsize:
                    raise TiffLayoutError(f"TIFF tile or strip {index} is truncated")
                if layout.predictor == 3:  # floating point: byte planes (most significant first), differenced
                    if len(data) < rows * row_bytes:
                        raise TiffLayoutError(f"TIFF tile or strip {index} is truncated")
                    shuffled = np.frombuffer(data, np.uint8, rows * row_bytes).reshape(rows, -1, per_pixel)
                    shuffled = np.cumsum(shuffled, axis=1, dtype=np.uint8).reshape(rows, stored.itemsize, -1)
                    values = np.ascontiguousarray(shuffled.transpose(0, 2, 1)).view(stored.newbyteorder(">"))
                    values = values.astype(native).reshape(rows, chunk_width, per_pixel)
                else:
                    full = rows * chunk_width * per_pixel  # a short last row is padded (its tail is not kept)
                    count = min(len(data) // stored.itemsize, full)
                    values = np.frombuffer(data, stored, count).astype(native)  # a writable copy in native order
                    if count < full:
                        values = np.pad(values, (0, full - count))
                    values = values.reshape(rows, chunk_width, per_pixel)
                if layout.predictor == 2:  # horizontal differencing, modulo 2**bits
                    values = np.cumsum(values, axis=1, dtype=native)
                values = values[:, :columns, :kept]
                if layout.photometric == 0:  # min-is-white (8 bits at most here): colour samples inverted
                    inverted = color if layout.planar == 1 else int(plane < color)
                    values[:, :, :inverted] ^= np.uint8(0xFF)
                if as_bytes and stored.itemsize == 2:
                    values = (values >> 8).astype(np.uint8)  # the rule's high byte
                target = out[y0:y0 + rows, x0:x0 + columns]
                if layout.planar == 2:
                    target[:, :, plane] = values[:, :, 0]
                else:
                    target[:] = values
    return out
