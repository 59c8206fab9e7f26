// PNG reading and writing for the example program, through libpng.
#pragma once

#include <cstddef>
#include <string>

#include "mrdl/image.hpp"

namespace mrdl::png {

/// Read a PNG (gray, gray + alpha, RGB, RGBA or palette; 1, 2, 4, 8 or 16 bit) as HxWx3 RGB
/// uint8 by the decoding rule of mrdl/decode.hpp, bit for bit what mrdl_runtime.imaging.read_image
/// returns: 16-bit samples keep their high byte (png_set_strip_16), 1/2/4-bit gray is scaled to
/// 0..255 by bit replication (as Pillow does), palettes become their RGB colours, alpha and tRNS
/// are dropped, gamma and colour chunks are ignored. Throws InputError for an unreadable file or
/// more than `max_pixels` pixels (checked before the pixels are decoded).
Image read_rgb(const std::string& path, size_t max_pixels = kDefaultMaxPixels);

/// Write an HxWxC uint8 image (C = 1 or 3) as PNG, via a temporary file renamed into place.
void write(const std::string& path, const ImageView& image);

}  // namespace mrdl::png
