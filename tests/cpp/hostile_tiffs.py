"""Crafted TIFF files whose numbers lie about what they cost, for both readers (runtime/VECTORS.md,
"TIFF byte bounds").

    python tests/cpp/hostile_tiffs.py OUT_DIR    # writes OUT_DIR/hostile_tiff.json and the files

Each case is a file and what both readers must do with it: decode it to ``expected`` (raw HxWx3
uint8 RGB beside it) or refuse it with an error containing ``error`` (the same words in Python's
``mrdl_runtime.imaging.read_image`` and C++'s ``mrdl::imageio::read_tiff``). ``make_test_data.py`` writes
them under the ``hostile_tiff`` key of the C++ test data's index.json; ``tests/test_hostile_tiff.py``
checks Python against them. The files are written byte by byte here (no library), so they hold
exactly the offsets and byte counts named below, including the ones no writer would produce.
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

SHORT, LONG, LONG8 = 3, 4, 16
BLOCK_BYTES = 8 << 20  # the shared block of the repeated-strip cases: 8 MiB
REPEATED_STRIPS = 4096
REPEATED_WIDTH = 512  # one-row 8-bit gray strips of 512 bytes, each claiming the whole 8 MiB block
COMPRESSED_SLACK = 1024  # a compressed strip or tile holds at most 4 x its decoded bytes + this (the rule)


def tiff_bytes(tags: dict[int, list[int]], data: bytes, *, bigtiff: bool = False,
               chunk_offsets: tuple[int, ...] = (273, 324)) -> bytes:
    """A little-endian (Big)TIFF: header, ``data``, then one directory. The values of the offset tags
    (``chunk_offsets``) are positions inside ``data`` and are shifted by the header's size; every
    other value is written as given (SHORT when it fits and the tag is not an offset or count,
    else LONG, or LONG8 in a BigTIFF)."""
    header = 16 if bigtiff else 8
    ifd_at = header + len(data) + (len(data) & 1)
    entry_size, count_format, offset_format = (20, "<Q", "<Q") if bigtiff else (12, "<H", "<I")
    inline = 8 if bigtiff else 4
    wide = LONG8 if bigtiff else LONG
    values_at = ifd_at + struct.calcsize(count_format) + entry_size * len(tags) + struct.calcsize(offset_format)
    entries, values = bytearray(struct.pack(count_format, len(tags))), bytearray()
    for tag in sorted(tags):
        items = [item + header for item in tags[tag]] if tag in chunk_offsets else list(tags[tag])
        kind = wide if tag in (273, 279, 324, 325) or max(items) > 0xFFFF else SHORT
        payload = struct.pack("<" + {SHORT: "H", LONG: "I", LONG8: "Q"}[kind] * len(items), *items)
        head = struct.pack("<HHQ" if bigtiff else "<HHI", tag, kind, len(items))
        if len(payload) <= inline:
            entries += head + payload.ljust(inline, b"\0")
        else:
            entries += head + struct.pack(offset_format, values_at + len(values))
            values += payload
    start = (b"II+\0" + struct.pack("<HHQ", 8, 0, ifd_at)) if bigtiff else (b"II*\0" + struct.pack("<I", ifd_at))
    return start + data + b"\0" * (len(data) & 1) + bytes(entries) + bytes(struct.calcsize(offset_format)) + bytes(values)


def _gray_strips(width: int, height: int, offsets: list[int], counts: list[int], *, rows: int = 1,
                 compression: int = 1) -> dict[int, list[int]]:
    return {256: [width], 257: [height], 258: [8], 259: [compression], 262: [1], 273: offsets, 277: [1],
            278: [rows], 279: counts}


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def cases(rng: np.random.Generator) -> list[tuple[str, bytes, np.ndarray | None, str | None]]:
    """(name, file bytes, expected RGB or None, error fragment or None) for every crafted file."""
    out = []
    block = rng.integers(0, 256, BLOCK_BYTES, dtype=np.uint8)
    # 4096 one-row strips, every one claiming the same 8 MiB block (issue 21: the Python reader read the
    # block 4096 times, 7.9 GB, then MemoryError). Uncompressed: each strip is read for the 512 bytes its
    # row needs, so every row is the block's first 512 bytes.
    out.append(("repeated_strips_8mib", tiff_bytes(_gray_strips(REPEATED_WIDTH, REPEATED_STRIPS, [0] * REPEATED_STRIPS,
                                                                [BLOCK_BYTES] * REPEATED_STRIPS), block.tobytes()),
                _rgb(np.tile(block[:REPEATED_WIDTH], (REPEATED_STRIPS, 1))), None))
    # The same with deflate: a compressed strip claiming 8 MiB for 512 decoded bytes is refused.
    packed = zlib.compress(block[:REPEATED_WIDTH].tobytes()).ljust(BLOCK_BYTES, b"\0")
    limit = 4 * REPEATED_WIDTH + COMPRESSED_SLACK
    out.append(("repeated_strips_8mib_deflate",
                tiff_bytes(_gray_strips(REPEATED_WIDTH, REPEATED_STRIPS, [0] * REPEATED_STRIPS,
                                        [BLOCK_BYTES] * REPEATED_STRIPS, compression=8), packed),
                None, f"TIFF tile or strip 0 holds {BLOCK_BYTES} compressed bytes for {REPEATED_WIDTH} decoded bytes; "
                      f"expected at most {limit}"))
    # Three 4-row strips of a 12x10 image; strip 1's byte count is 2**63 (the Python reader raised
    # OverflowError) or its offset lies past the end of the file.
    pixels = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    data = pixels.tobytes()
    for name, offsets, counts, bigtiff in (
            ("bytecount_2_63", [0, 40, 80], [40, 1 << 63, 40], True),
            ("bytecount_past_end", [0, 40, 80], [40, 1_000_000, 40], False),
            ("offset_past_end", [0, 1 << 31, 80], [40, 40, 40], False)):
        end = (offsets[1] + (16 if bigtiff else 8), counts[1])
        out.append((name, tiff_bytes(_gray_strips(10, 12, offsets, counts, rows=4), data, bigtiff=bigtiff),
                    None, f"TIFF tile or strip 1 is truncated: {end[1]} bytes at offset {end[0]} go past the end of "
                          "the file"))
    # Strips that overlap: each 10-byte row strip starts 5 bytes after the previous one (every row is the
    # 10 bytes at 5 * row); read as the offsets say.
    overlapping = np.stack([np.frombuffer(data, np.uint8)[5 * row:5 * row + 10] for row in range(12)])
    out.append(("overlapping_strips", tiff_bytes(_gray_strips(10, 12, [5 * row for row in range(12)], [10] * 12), data),
                _rgb(overlapping), None))
    # A 40x40 RGB image of 16x16 tiles (3 x 3, the edge ones padded), all nine pointing at one tile.
    tile = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    tags = {256: [40], 257: [40], 258: [8, 8, 8], 259: [1], 262: [2], 277: [3], 284: [1], 322: [16], 323: [16],
            324: [0] * 9, 325: [tile.nbytes] * 9}
    expected = np.tile(tile, (3, 3, 1))[:40, :40]
    out.append(("repeated_tiles", tiff_bytes(tags, tile.tobytes()), expected, None))
    # A compressed tile claiming more than its bound, but held by the file: refused before it is read.
    squeezed = zlib.compress(tile.tobytes())
    tags = {**tags, 259: [8], 324: [0] * 9, 325: [4 * tile.nbytes + COMPRESSED_SLACK + 1] * 9}
    out.append(("tile_bytecount_over_bound", tiff_bytes(tags, squeezed.ljust(4 * tile.nbytes + 2048, b"\0")), None,
                f"TIFF tile or strip 0 holds {4 * tile.nbytes + COMPRESSED_SLACK + 1} compressed bytes for "
                f"{tile.nbytes} decoded bytes; expected at most {4 * tile.nbytes + COMPRESSED_SLACK}"))
    # Palette (Pillow's path in Python, libtiff's in C++): a strip count of 2**63 as well.
    palette = {256: [10], 257: [12], 258: [8], 259: [1], 262: [3], 273: [0, 40, 80], 277: [1], 278: [4],
               279: [40, 1 << 63, 40], 320: [value * 257 for value in range(256)] * 3}
    out.append(("palette_bytecount_2_63", tiff_bytes(palette, data, bigtiff=True), None,
                f"TIFF tile or strip 1 is truncated: {1 << 63} bytes at offset 56 go past the end of the file"))
    return out


def write_vectors(folder: str | Path, rng: np.random.Generator | None = None) -> list[dict]:
    """Write every case's file (and expected RGB, raw uint8) into ``folder``; return their index entries."""
    folder = Path(folder)
    entries = []
    for name, data, expected, error in cases(rng or np.random.default_rng(21)):
        file = f"hostile_{name}.tif"
        (folder / file).write_bytes(data)
        entry = {"name": name, "file": file, "bytes": len(data)}
        if error is not None:
            entry["error"] = error
        else:
            (folder / f"hostile_{name}_rgb.u8").write_bytes(np.ascontiguousarray(expected).tobytes())
            entry.update(height=int(expected.shape[0]), width=int(expected.shape[1]), expected=f"hostile_{name}_rgb.u8")
        entries.append(entry)
    return entries


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: hostile_tiffs.py OUT_DIR")
    target = Path(sys.argv[1])
    target.mkdir(parents=True, exist_ok=True)
    index = write_vectors(target)
    (target / "hostile_tiff.json").write_text(json.dumps({"cases": index}, indent=1) + "\n")
    print(f"wrote {len(index)} crafted TIFF cases to {target}")
