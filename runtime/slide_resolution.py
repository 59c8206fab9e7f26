"""A slide's resolution from its metadata: OME ``PhysicalSizeX/Y``, Aperio's ``MPP``, the TIFF resolution tags.

Each reader returns microns per pixel as (x, y), or None where the file records none; a value that is
recorded but unusable (not a positive number, a unit that is not a length, half an OME pair, a size that
is not the image's) is a :class:`~mrdl_runtime.errors.SlideError` saying what was found, and so is a
desktop default of 72/96/150/300 pixels per inch and a value finer than :data:`MIN_MPP` (a unit mix-up).
:class:`mrdl_runtime.slide_reader.SlideReader` asks them in its order (docs/slides.md).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree

from .errors import SlideError

# OME's UnitsLength symbols (the micro sign U+00B5, and the Greek mu U+03BC that some writers use for it)
_OME_UNITS_IN_MICRONS = {"\u00b5m": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4,
                         "m": 1e6}
# Finer than anything a light microscope resolves (its limit is about 0.2 um; scanners store 0.1-1 um/px):
# a value below it is a number in the wrong unit (metres or millimetres written as microns), not a scan.
MIN_MPP = 0.01
# Pixels per inch that image editors and converters write when they know no resolution: not a scanner's.
DEFAULT_PPI = (72, 96, 150, 300)
_MICRONS_PER_TAG_UNIT = {"INCH": 25400.0, "CENTIMETER": 10000.0, "MILLIMETER": 1000.0, "MICROMETER": 1.0}


def positive(value: object) -> float | None:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _recorded(value: object, name: str) -> float:
    """A resolution field that the file does record, as a number. A value that is not a positive finite
    number (NaN, inf, 0, negative, a decimal comma) is refused as invalid: reporting it as missing would
    send the user looking for metadata that is there, and skipping it would read a less trusted source."""
    number = positive(value)
    if number is None:
        raise SlideError(f"the slide records {name} = {value}, which is not a valid resolution (expected a positive "
                         "number of microns per pixel); give it with --mpp MICRONS_PER_PIXEL")
    return number


def _ome_images(ome_xml: str) -> list[ElementTree.Element | None]:
    """The ``Pixels`` element of each OME ``Image`` (None for an Image without one); [] for XML that does not parse."""
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return []
    return [next((child for child in element if child.tag.rsplit("}", 1)[-1] == "Pixels"), None)
            for element in root if element.tag.rsplit("}", 1)[-1] == "Image"]


def _declared_size(pixels: ElementTree.Element) -> tuple[str | None, str | None]:
    return pixels.get("SizeY"), pixels.get("SizeX")


def _ome_pixels(ome_xml: str, image: int, size: tuple[int, int] | None) -> ElementTree.Element | None:
    """The ``Pixels`` element of OME ``Image`` number ``image`` (tifffile numbers its series in the XML's
    Image order), or None. With ``size`` (height, width), an Image of another size is not the one read
    (tifffile skips an Image it cannot map, shifting the numbers): the first Image of that size is taken."""
    found = _ome_images(ome_xml)
    if size is None:
        return found[image] if image < len(found) else None
    wanted = (str(size[0]), str(size[1]))
    if image < len(found) and found[image] is not None and _declared_size(found[image]) == wanted:
        return found[image]
    return next((element for element in found if element is not None and _declared_size(element) == wanted), None)


def ome_mpp_unused(ome_xml: str | None, image: int = 0, size: tuple[int, int] | None = None) -> str | None:
    """Why an OME PhysicalSize that the file records is not the resolution of image ``image`` of level-0
    ``size`` (height, width): recorded on one axis only, or for an Image whose declared size differs from
    the pixels read; None when there is no PhysicalSize to explain (or it is used)."""
    found = _ome_images(ome_xml) if ome_xml else []
    pixels = _ome_pixels(ome_xml, image, size) if ome_xml else None
    if pixels is not None:
        recorded = [axis for axis in ("X", "Y") if pixels.get(f"PhysicalSize{axis}") is not None]
        if len(recorded) == 1:
            missing = "Y" if recorded == ["X"] else "X"
            return (f"OME PhysicalSize{recorded[0]} = {pixels.get(f'PhysicalSize{recorded[0]}')} but no "
                    f"PhysicalSize{missing}")
        return None
    declared = found[image] if image < len(found) else None
    if size is None or declared is None or all(declared.get(f"PhysicalSize{axis}") is None for axis in "XY"):
        return None
    height, width = _declared_size(declared)
    return (f"OME Image {image} records a PhysicalSize but declares {width}x{height} pixels (SizeX x SizeY), "
            f"while the TIFF image holds {size[1]}x{size[0]}, so it is not this image's resolution")


def ome_mpp(ome_xml: str | None, image: int = 0, size: tuple[int, int] | None = None) -> tuple[float, float] | None:
    """(y, x) microns per pixel from OME ``Image`` number ``image``'s PhysicalSizeY/X (with their units),
    checked against the image's level-0 ``size`` (height, width) when given; None when not recorded (or
    not usable, :func:`ome_mpp_unused` says why). A recorded size that is not a positive number is a
    :class:`SlideError`."""
    pixels = _ome_pixels(ome_xml, image, size) if ome_xml else None
    if pixels is None or pixels.get("PhysicalSizeX") is None or pixels.get("PhysicalSizeY") is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        size_um = _recorded(pixels.get(f"PhysicalSize{axis}"), f"OME PhysicalSize{axis}")
        symbol = pixels.get(f"PhysicalSize{axis}Unit", "\u00b5m")
        unit = _OME_UNITS_IN_MICRONS.get(symbol)
        if unit is None:
            raise SlideError(f"the slide records OME PhysicalSize{axis}Unit = {symbol!r}, not a length unit this reader "
                             f"knows ({', '.join(_OME_UNITS_IN_MICRONS)}); give the resolution with --mpp "
                             "MICRONS_PER_PIXEL")
        sizes.append(size_um * unit)
    return sizes[0], sizes[1]


def aperio_mpp(description: str | None) -> float | None:
    """The ``MPP = 0.2520`` field of an Aperio ImageDescription, or None when absent; a field that is not a
    positive number (``MPP = nan``) is a :class:`SlideError`."""
    found = re.search(r"\|\s*MPP\s*=\s*([^|\r\n]*)", description or "")
    return _recorded(found.group(1).strip(), "Aperio MPP") if found else None


def _default_ppi(pixels_per_unit: float, unit: str) -> int | None:
    """The desktop default (72, 96, 150 or 300 pixels per inch) that a resolution tag holds, or None.
    Per centimetre they are not whole numbers (72 dpi is 28.3465 px/cm), so compare to 4 digits."""
    ppi = pixels_per_unit * (2.54 if unit == "CENTIMETER" else 1.0) if unit in ("INCH", "CENTIMETER") else None
    return next((default for default in DEFAULT_PPI if ppi is not None and abs(ppi - default) <= 1e-4 * default),
                None)


def tag_mpp(page) -> tuple[float, float] | None:
    """(y, x) microns per pixel from a TIFF page's YResolution/XResolution/ResolutionUnit; None without
    them or in unit NONE. A desktop default (:data:`DEFAULT_PPI`) is refused: it says nothing about the scan."""
    tags = page.tags
    unit = getattr(tags.get("ResolutionUnit"), "value", None)
    unit = getattr(unit, "name", str(unit))
    if unit not in _MICRONS_PER_TAG_UNIT or "XResolution" not in tags or "YResolution" not in tags:
        return None
    per_unit = []
    for axis in ("Y", "X"):
        numerator, denominator = tags[f"{axis}Resolution"].value
        value = numerator / denominator if denominator else f"{numerator}/{denominator}"
        per_unit.append(_recorded(value, f"TIFF {axis}Resolution"))
    defaults = {_default_ppi(value, unit) for value in per_unit}
    if None not in defaults:
        raise SlideError(f"the slide's only resolution is TIFF tags of {'/'.join(map(str, sorted(defaults)))} pixels "
                         "per inch, which looks like an image editor's default, not the scanner's; give the "
                         "resolution with --mpp MICRONS_PER_PIXEL (e.g. --mpp 0.25 for a 40x scan)")
    return _MICRONS_PER_TAG_UNIT[unit] / per_unit[0], _MICRONS_PER_TAG_UNIT[unit] / per_unit[1]


def check_fine_enough_to_be_real(mpp: tuple[float, float], source: str) -> None:
    """Refuse a resolution finer than :data:`MIN_MPP`: such a value is a unit mix-up, and running it would
    shrink the slide to a mask of a pixel or two and succeed."""
    finest = min(mpp)
    if finest < MIN_MPP:
        value = f"--mpp {finest:g}" if source == "--mpp" else f"{finest:g} um/px ({source})"
        raise SlideError(f"the slide's resolution {value} is finer than any light microscope resolves "
                         f"({MIN_MPP:g} um/px): a value in the wrong unit (metres or millimetres written "
                         "as microns)? give the slide's microns per pixel with --mpp (e.g. --mpp 0.25 for a 40x scan)")
