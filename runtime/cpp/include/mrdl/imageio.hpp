// mrdl::imageio, the optional image-file component of the C++ runtime: PNG and TIFF files decoded
// to the same RGB bytes as the Python runtime's mrdl_runtime.imaging.read_image, and masks written
// as PNG. Its own library (libmrdl_imageio, linking libpng and libtiff >= 4.5):
//   find_package(mrdl CONFIG REQUIRED COMPONENTS imageio)
//   target_link_libraries(app PRIVATE mrdl::runtime mrdl::imageio)
// Every function throws mrdl::InputError (mrdl/errors.hpp) with a message naming the file and what
// was expected: unreadable, damaged or unsupported files, and images over `max_pixels` pixels
// (checked from the header, before any pixel data is decoded).
#pragma once

#include "mrdl/imageio_export.hpp"

#include <cstddef>
#include <string>

#include "mrdl/image.hpp"

namespace mrdl::imageio {

/// Read a PNG (read_png) or TIFF (read_tiff) file as HxWx3 RGB uint8, whichever its first bytes
/// say it is; anything else is an InputError naming both accepted formats. The C++ counterpart of
/// mrdl_runtime.imaging.read_image: the same bytes for every file both accept.
MRDL_IMAGEIO_API Image read_image(const std::string& path, size_t max_pixels = kDefaultMaxPixels);

/// Read a PNG (gray, gray + alpha, RGB, RGBA or palette; 1, 2, 4, 8 or 16 bit) as HxWx3 RGB
/// uint8 by the decoding rule of mrdl/decode.hpp: 16-bit samples keep their high byte
/// (png_set_strip_16), 1/2/4-bit gray is scaled to 0..255 by bit replication (as Pillow does),
/// palettes become their RGB colours, alpha and tRNS are dropped, gamma and colour chunks are
/// ignored.
MRDL_IMAGEIO_API Image read_png(const std::string& path, size_t max_pixels = kDefaultMaxPixels);

/// Read the first image of a TIFF (or BigTIFF) file as HxWx3 RGB uint8 by the decoding rule of
/// mrdl/decode.hpp, the same bytes mrdl_runtime.imaging.read_image returns:
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
/// without JPEG, CMYK, CIELab, ...), associated (premultiplied) alpha, 16-bit min-is-white, bit
/// depths other than 1, 2, 4, 8, 16, 32 (64 for floats), damaged files, more than `max_pixels`
/// pixels, and strip / tile tags that break the byte bounds of runtime/VECTORS.md ("TIFF byte
/// bounds", checked before any pixel data is read): a chunk past the end of the file, or a
/// compressed one holding more than 4 x its decoded bytes + 1024. Repeated or overlapping chunks
/// are read as the tags say, an uncompressed one for the bytes its rows need, so the bytes read
/// are bounded by the decoded image and the file whatever the tags claim.
MRDL_IMAGEIO_API Image read_tiff(const std::string& path, size_t max_pixels = kDefaultMaxPixels);

/// True when the file starts with a TIFF or BigTIFF signature (II*\0, MM\0*, II+\0, MM\0+).
MRDL_IMAGEIO_API bool is_tiff(const std::string& path);

/// Write an HxWxC uint8 image (C = 1 or 3) as an 8-bit gray or RGB PNG, through a temporary file
/// (`path` + ".tmp") renamed into place, so `path` is never left half written; on any failure (a
/// `path` that is a directory, a missing folder, a full disk) the temporary file is removed and an
/// InputError names `path`. PNG is the only format written, whatever `path`'s extension.
MRDL_IMAGEIO_API void write_png(const std::string& path, const ImageView& image);

}  // namespace mrdl::imageio
