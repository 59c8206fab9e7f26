// TIFF reading for the example program, through libtiff.
#pragma once

#include <cstddef>
#include <string>

#include "mrdl/image.hpp"

namespace mrdl::tiff {

/// Read the first image of a TIFF (or BigTIFF) file as HxWx3 RGB uint8 by the decoding rule of
/// mrdl/decode.hpp, the same bytes mrdl_runtime.imaging.read_image (Pillow) returns:
/// - strips or tiles, contiguous or separate planes, any compression this libtiff decodes
///   (none, LZW, deflate, PackBits, ... with or without a predictor), either byte order;
/// - gray (min-is-black; min-is-white inverted for 1 to 8 bits), RGB, palette (colour map
///   entries keep their high byte), JPEG-compressed YCbCr (libjpeg's RGB conversion, as Pillow
///   has libtiff do); 1/2/4-bit gray scaled to 0..255 (v * 255 / (2^bits - 1));
/// - unsigned 8- and 16-bit samples (16-bit: the high byte), signed 16/32-bit integers (values
///   in [0, 65535]: as 16-bit) and 32/64-bit floats ([0, 1] or [0, 255]), through mrdl::to_rgb8;
/// - an unassociated alpha or unspecified extra samples are dropped;
/// - the Orientation tag (1 to 8) applied as Pillow applies it on loading a TIFF (mirrored,
///   turned or transposed: 5 to 8 give a WxH image); other values leave the pixels as stored.
/// Refused with an InputError naming what was found: other photometric interpretations (YCbCr
/// without JPEG, CMYK, CIELab, ...), associated (premultiplied) alpha, 16-bit min-is-white, bit depths other
/// than 1, 2, 4, 8, 16, 32 (64 for floats), damaged files, and more than `max_pixels` pixels
/// (checked from the header, before any pixel data is read).
Image read_rgb(const std::string& path, size_t max_pixels = kDefaultMaxPixels);

/// True when the file starts with a TIFF or BigTIFF signature (II*\0, MM\0*, II+\0, MM\0+).
bool has_signature(const std::string& path);

}  // namespace mrdl::tiff
