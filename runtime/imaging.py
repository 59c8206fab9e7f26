"""Image decoding, pre- and postprocessing with numpy + Pillow, exactly as training did (docs/deploy-manifest.md).

**Decoding** (one rule for training, this runtime and the C++ runtime): :func:`to_rgb8` maps any
array to HxWx3 uint8 (uint8 kept; bool -> 0/255; uint16 and other integers in [0, 65535] -> the
high byte; finite non-negative floats in [0, 1] -> floor(v * 255 + 0.5), in [0, 255] -> floor(v + 0.5),
computed in float64, a maximum in (1, 2) refused (neither convention); gray replicated, gray+alpha and
RGBA lose alpha).
:func:`read_image` decodes a file with Pillow under a pixel limit checked from the header
before any pixel data is decoded, then applies the same rule. TIFFs are checked from their tags
first and refused or decoded exactly as the C++ reader does (:mod:`mrdl_runtime.tiff`: Pillow
mis-decodes some TIFF layouts); a PNG's image data is checked against its header first
(:mod:`mrdl_runtime.png`: Pillow zero-fills the rows a cleanly ended stream lacks).

**Preprocessing**: Pillow bilinear (antialiased) resize on the uint8 RGB image, times ``scale``
(1/255) in float32, HWC -> CHW. **Postprocessing** resizes each probability map back to the
original size with Pillow's mode-"F" bilinear resize, then thresholds (one class) or takes the
argmax; :func:`mask_at_size` does the same one map at a time without holding them all. Both
resizes are :mod:`mrdl_runtime.resample`'s Pillow path.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, TiffImagePlugin, UnidentifiedImageError

from . import png, tiff
from .errors import MrdlError
from .resample import pillow_map_strips, resize_rgb, rows_per_strip

CHANNEL_ORDERS = ("RGB", "BGR")
# image files, any case: inputs, datasets, --data
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".gif")
# A float image whose largest value is in (1, 2) fits neither convention: a [0, 1] image that overshoots (one
# pixel at 1.0001 after colour normalisation) would otherwise be read as [0, 255] and come out black.
AMBIGUOUS_FLOAT_BELOW = 2.0
DEFAULT_MAX_PIXELS = 250_000_000  # a 15811 x 15811 image; --max-pixels / max_pixels raises it
_ARRAY_MODES = ("1", "L", "LA", "RGB", "RGBA", "RGBX", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_PILLOW_LIMIT = tiff.PILLOW_GLOBALS  # Image.MAX_IMAGE_PIXELS and TiffImagePlugin.READ_LIBTIFF are process-global


class ImageInputError(MrdlError, ValueError):
    """An input image of the wrong dtype, shape, channel count or value range."""


class ImageReadError(ImageInputError):
    """An image file that cannot be read: missing, not an image, truncated, or over the pixel limit."""


def _check_layout(array: np.ndarray) -> None:
    expected = "an HxW, HxWx1 (gray), HxWx2 (gray+alpha), HxWx3 (RGB) or HxWx4 (RGBA) image"
    if array.ndim not in (2, 3):
        raise ImageInputError(f"expected {expected}; got a {array.ndim}-d array of shape {array.shape}")
    if array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4):
        layout = " (it looks channels-first; transpose to HxWxC)" if array.shape[0] in (1, 2, 3, 4) else ""
        raise ImageInputError(f"expected {expected}; got shape {array.shape} with {array.shape[2]} channels{layout}")
    if array.size == 0:
        raise ImageInputError(f"expected {expected}; got an empty image of shape {array.shape}")


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    if not all(np.isfinite(array[r:r + 64]).all() for r in range(0, len(array), 64)):
        raise ImageInputError("float image holds NaN or infinite values; expected finite values in [0, 1] or [0, 255]")
    low, high = float(array.min()), float(array.max())
    if low < 0:
        raise ImageInputError(f"float image values down to {low:g}; expected [0, 1] or [0, 255]")
    if high > 255.0:
        raise ImageInputError(f"float image values up to {high:g}; expected [0, 1] or [0, 255]")
    if 1.0 < high < AMBIGUOUS_FLOAT_BELOW:
        raise ImageInputError(f"float image values up to {high:g}: just over [0, 1], and read as [0, 255] the image "
                              "would be black; clip it to [0, 1] (or scale it to [0, 255])")
    factor = 255.0 if high <= 1.0 else 1.0
    out = np.empty(array.shape, dtype=np.uint8)
    step = rows_per_strip(8 * array[0].size)
    for start in range(0, len(array), step):  # float64 in strips: the rule's arithmetic, bounded memory
        out[start:start + step] = np.floor(array[start:start + step].astype(np.float64) * factor + 0.5)
    return out


def _values_to_uint8(array: np.ndarray) -> np.ndarray:
    """The per-value part of the rule (any dtype -> uint8, same shape)."""
    kind = array.dtype.kind
    if array.dtype == np.uint8:
        return array
    if kind == "b":  # not view(uint8): Pillow's mode "1" arrays store True as 0xFF (0xFF * 255 wraps to 1)
        return np.where(array, np.uint8(255), np.uint8(0))
    if kind in "iu":
        if not (kind == "u" and array.dtype.itemsize == 2):
            low, high = int(array.min()), int(array.max())
            if low < 0 or high > 65535:
                raise ImageInputError(f"integer image values from {low} to {high}; expected 8-bit (uint8) "
                                      "or 16-bit values in [0, 65535]")
        return (array >> 8).astype(np.uint8)
    if kind == "f":
        return _float_to_uint8(array)
    raise ImageInputError(f"image dtype {array.dtype} is not an image type; expected uint8, uint16, bool, "
                          "an integer type with values in [0, 65535], or float in [0, 1] / [0, 255]")


def to_rgb8(array: np.ndarray) -> np.ndarray:
    """Any HxW / HxWxC (C in 1..4) image array -> HxWx3 uint8 RGB by the one decoding rule.

    Values first (over the whole array, alpha included), then channels: gray (1) replicated,
    gray+alpha (2) -> gray replicated, RGB (3) kept, RGBA (4) alpha dropped. A uint8 RGB
    C-contiguous array is returned as is (no copy).
    """
    if not isinstance(array, np.ndarray):
        raise ImageInputError(f"expected a numpy image array, got {type(array).__name__}")
    array = np.asarray(array)  # a subclass (np.matrix, a masked array) as its plain values: np.matrix stays 2-d
    _check_layout(array)
    values = _values_to_uint8(array)
    if values.ndim == 2:
        values = values[:, :, None]
    if values.shape[2] in (1, 2):
        return np.repeat(values[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(values[:, :, :3])


def _open(path: Path, max_pixels: int, *, libtiff: bool = False) -> Image.Image:
    """Image.open (which reads the header only), then the pixel limit checked from the header's size.

    Pillow's own decompression-bomb check (a warning above Image.MAX_IMAGE_PIXELS, an error above
    twice that) is switched off for the call and replaced by this check against ``max_pixels``.
    ``libtiff``: a TIFF is decoded by libtiff even when uncompressed (Pillow's READ_LIBTIFF, read
    when the file is opened; set for the call only, under the same lock).
    """
    with _PILLOW_LIMIT:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        saved_libtiff, TiffImagePlugin.READ_LIBTIFF = TiffImagePlugin.READ_LIBTIFF, libtiff
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
            TiffImagePlugin.READ_LIBTIFF = saved_libtiff
    try:
        _check_pixel_count(path, *image.size, max_pixels)
    except ImageReadError:
        image.close()
        raise
    return image


def _check_pixel_count(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageReadError(f"{path} is {width}x{height} = {width * height:,} pixels, over the limit of "
                             f"{max_pixels:,} pixels; raise it with --max-pixels (max_pixels=) if the file is "
                             "trusted and memory allows")


def _pixels(image: Image.Image) -> np.ndarray:
    """A loaded Pillow image as a numpy array, copied in row strips (no full-size bytes object)."""
    width, height = image.size
    rows = rows_per_strip(16 * width)
    first = np.asarray(image.crop((0, 0, width, min(rows, height))))
    out = np.empty((height, *first.shape[1:]), dtype=first.dtype)
    out[:len(first)] = first
    for start in range(len(first), height, rows):
        out[start:start + rows] = np.asarray(image.crop((0, start, width, min(start + rows, height))))
    return out


def _decode(image: Image.Image, *, from_tiff: bool = False) -> np.ndarray:
    if from_tiff:  # Pillow's TIFF reader repeats its decompression-bomb check on loading: off, as in _open
        with tiff.without_bomb_check(image.size[0] * image.size[1]):
            image.load()
    image.load()
    if from_tiff and image.mode not in tiff.PILLOW_MODES:  # a checked layout never needs Pillow's conversions
        raise ImageInputError(f"TIFF decoded by Pillow to mode {image.mode!r}; the Python reader takes modes "
                              f"{', '.join(tiff.PILLOW_MODES)} from TIFFs, which decode by the rule")
    orientation = exif_orientation(image) if not from_tiff else 1
    if image.mode in ("P", "PA"):
        image = palette_colours(image)
    elif image.mode not in _ARRAY_MODES:  # CMYK, YCbCr, LAB, HSV, premultiplied, ...
        try:
            image = image.convert("RGB")
        except ValueError as exc:
            raise ImageInputError(f"Pillow image mode {image.mode!r} cannot be converted to RGB ({exc})") from exc
    return to_rgb8(tiff.oriented(_pixels(image), orientation))


EXIF_ORIENTED = ("JPEG", "MPO", "WEBP")  # formats whose EXIF Orientation is applied (the C++ runtime reads none)


def palette_colours(image: Image.Image) -> Image.Image:
    """A palette image (mode P or PA) as its RGB(A) colours, via RGBA when a transparency is set; others as they
    are. Images and masks alike are read by colour: a palette's index 0 may be white."""
    if image.mode not in ("P", "PA"):
        return image
    return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation (1 to 8) of a JPEG or WebP, applied as to a TIFF's (cameras and phones store the
    pixels as the sensor read them and the turn in this tag, which every viewer applies: a mask in stored
    order would not line up with the image as seen). 1 for other formats: a PNG's eXIf chunk is left
    alone, as the C++ runtime (libpng) leaves it, so that both runtimes give the same masks."""
    if image.format not in EXIF_ORIENTED:
        return 1
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: the pixels are still readable, as stored
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def file_exif_orientation(path: str | Path) -> int:
    """:func:`exif_orientation` of an image file, from its header (no pixel data decoded); 1 when unreadable."""
    try:
        with _open(Path(path), max_pixels=2**62) as image:
            return exif_orientation(image)
    except Exception:  # noqa: BLE001 - reading the file itself reports its problems
        return 1


def read_image(path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file (first frame) to HxWx3 uint8 RGB by the one decoding rule.

    Images with more than ``max_pixels`` pixels are refused from their header, before any pixel
    data is decoded. Raises :class:`ImageReadError` naming the file and the problem.
    """
    path = Path(path)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    if not path.is_file():
        raise ImageReadError(f"image {path} does not exist or is not a file")
    tags = None
    try:
        tags = tiff.read_tags(path)
        layout = None if tags is None else tiff.check_layout(tags)
        if layout is not None and tiff.decoded_here(layout):  # from the samples, as the C++ reader: no Pillow quirks
            _check_pixel_count(path, layout.width, layout.height, max_pixels)
            return to_rgb8(tiff.oriented(tiff.read_samples(path, tags, layout), tags.get(274, 1)))
        with _open(path, max_pixels, libtiff=layout is not None and tiff.pillow_libtiff(layout)) as image:
            if image.format == "PNG":  # Pillow zero-fills rows a cleanly ended stream lacks; libpng refuses them
                png.check_image_data(path)
            return _decode(image, from_tiff=tags is not None)
    except ImageReadError:
        raise
    except (ImageInputError, tiff.TiffLayoutError) as exc:
        raise ImageReadError(f"{path}: {exc}") from exc
    except UnidentifiedImageError as exc:
        if tags is not None:  # the layout passed the checks, but Pillow has no unpacker for it (and it is compressed)
            raise ImageReadError(f"cannot read {path} as an image: Pillow cannot decode this TIFF layout "
                                 f"({tiff.describe(tags)}); the C++ runtime reads it, the Python one once it is "
                                 "saved uncompressed or deflate-compressed") from exc
        raise ImageReadError(f"cannot read {path} as an image: {exc}") from exc
    except (OSError, SyntaxError, ValueError, struct.error, KeyError, TypeError) as exc:  # the last 3: bad TIFF tags
        raise ImageReadError(f"cannot read {path} as an image: {exc}") from exc


def check_image(image: object, *, channel_order: str = "RGB") -> np.ndarray:
    """Validate one input image and return it as HxWx3 uint8 RGB (:func:`to_rgb8`'s rule).

    Accepts HxWx3 (RGB, or BGR with ``channel_order="BGR"``), HxWx4 (alpha dropped), HxWx2
    (gray+alpha) and grayscale HxW or HxWx1 (replicated), as uint8, bool, uint16, integers in
    [0, 65535] or floats in [0, 1] / [0, 255].
    """
    if channel_order not in CHANNEL_ORDERS:
        raise ImageInputError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    rgb = to_rgb8(image)
    return np.ascontiguousarray(rgb[:, :, ::-1]) if channel_order == "BGR" else rgb


def to_model_input(resized: np.ndarray, scale: float = 1.0 / 255.0) -> np.ndarray:
    """An already resized HxWx3 uint8 image -> (3, H, W) float32, values = uint8 * scale."""
    scaled = resized.astype(np.float32) * np.float32(scale)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))  # (3, H, W)


def preprocess(image: np.ndarray, size: tuple[int, int], *, scale: float = 1.0 / 255.0,
               channel_order: str = "RGB") -> np.ndarray:
    """One image -> the model input (3, size[0], size[1]) float32, values = uint8 * scale."""
    return to_model_input(resize_rgb(check_image(image, channel_order=channel_order), size), scale)


def resize_probabilities(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) float32 -> (C, size[0], size[1]) float32, each map with Pillow mode-"F" bilinear."""
    if probabilities.shape[1:] == tuple(size):
        return probabilities.astype(np.float32, copy=False)
    out = np.empty((len(probabilities), *size), dtype=np.float32)
    for resized_maps, probability in zip(out, probabilities):
        for rows, strip in pillow_map_strips(probability, size):
            resized_maps[rows] = strip
    return out


def probabilities_to_mask(probabilities: np.ndarray, *, threshold: float) -> np.ndarray:
    """(C, H, W) probabilities -> (H, W) uint8 mask: ``p > threshold`` for one class, else argmax."""
    if probabilities.shape[0] == 1:
        return (probabilities[0] > threshold).astype(np.uint8)
    return probabilities.argmax(axis=0).astype(np.uint8)


def mask_at_size(probabilities: np.ndarray, size: tuple[int, int], *, threshold: float) -> np.ndarray:
    """(C, h, w) probabilities -> the (size[0], size[1]) uint8 mask, equal to
    ``probabilities_to_mask(resize_probabilities(probabilities, size))`` but holding one resized map
    at a time (and a running maximum for several classes) instead of all C at full size."""
    if probabilities.shape[1:] == tuple(size):
        return probabilities_to_mask(probabilities, threshold=threshold)
    mask = np.zeros(size, dtype=np.uint8)
    best = np.empty(size, dtype=np.float32) if len(probabilities) > 1 else None
    for label, probability in enumerate(probabilities):
        for rows, strip in pillow_map_strips(probability, size):
            if best is None:
                mask[rows] = strip > threshold
            elif label == 0:
                best[rows] = strip
            else:  # argmax: the first maximum wins, and a NaN counts as the maximum (numpy's rule)
                current = best[rows]
                better = (strip > current) | (np.isnan(strip) & ~np.isnan(current))
                mask[rows][better] = label
                current[better] = strip[better]
    return mask
