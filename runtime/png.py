"""A PNG's image data checked against its header before Pillow decodes it.

Pillow fills the rows a PNG's zlib stream does not hold with zeros and raises nothing when the
stream itself ends cleanly (a file cut and re-compressed, a writer that stopped early): the mask
of such a file would be silently empty where the rows are missing. libpng, which the C++ runtime
reads PNGs with, refuses it ("Not enough image data"). :func:`check_image_data` counts the bytes
the IDAT stream inflates to, without keeping them, against what IHDR's size, colour type, bit depth
and interlacing need, so both runtimes refuse the same files.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from .errors import MrdlError

SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
READ_BYTES = 1 << 20  # inflated at most this many bytes at a time


class PngDataError(MrdlError, ValueError):
    """A PNG whose image data is shorter than its header's size needs, or whose header is malformed."""


def expected_bytes(width: int, height: int, bit_depth: int, colour_type: int, interlaced: bool) -> int:
    """Bytes of filtered scanlines (one filter byte per row) a WxH image needs, per Adam7 pass when interlaced."""
    bits = bit_depth * CHANNELS[colour_type]

    def rows(w: int, h: int) -> int:
        return 0 if w == 0 or h == 0 else h * (1 + (w * bits + 7) // 8)

    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x + dx - 1) // dx if width > x else 0, (height - y + dy - 1) // dy if height > y else 0)
               for x, y, dx, dy in ADAM7)


def check_image_data(path: Path) -> None:
    """Raise :class:`PngDataError` when ``path`` (a PNG) inflates to fewer bytes than its header needs.

    Reads the chunks in order and inflates the IDAT stream through a bounded buffer: memory stays
    small whatever the header claims (the pixel limit is checked separately, before this runs).
    """
    with open(path, "rb") as stream:
        if stream.read(8) != SIGNATURE:
            return  # not a PNG: Pillow decides
        header = None
        inflater, inflated, seen_data = zlib.decompressobj(), 0, False
        while True:
            head = stream.read(8)
            if len(head) < 8:
                break
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IHDR":
                body = stream.read(length)
                if len(body) != 13:
                    raise PngDataError("its IHDR chunk is not 13 bytes")
                width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", body)
                if colour_type not in CHANNELS:
                    return  # Pillow refuses it with its own message
                header = expected_bytes(width, height, bit_depth, colour_type, interlace == 1)
                stream.seek(4, 1)  # CRC
            elif kind == b"IDAT" and header is not None:
                seen_data = True
                remaining = length
                while remaining and inflated <= header:
                    chunk = stream.read(min(remaining, READ_BYTES))
                    if not chunk:
                        break
                    remaining -= len(chunk)
                    try:
                        inflated += _inflate(inflater, chunk, header + 1 - inflated)
                    except zlib.error as exc:
                        raise PngDataError(f"its image data does not inflate ({exc})") from exc
                stream.seek(remaining + 4, 1)
                if inflated > header:
                    return
            elif kind == b"IEND":
                break
            else:
                stream.seek(length + 4, 1)
    if header is not None and seen_data and inflated < header:
        raise PngDataError(f"it is truncated: its image data inflates to {inflated:,} bytes, and its "
                           f"{width}x{height} header needs {header:,}")


def _inflate(inflater, data: bytes, limit: int) -> int:
    """How many bytes ``data`` inflates to, reading at most ``limit`` (kept in READ_BYTES pieces, not all at once)."""
    total = 0
    while data and total < limit:
        piece = inflater.decompress(data, min(READ_BYTES, limit - total))
        total += len(piece)
        data = inflater.unconsumed_tail
        if not piece and not data:
            break
    return total
