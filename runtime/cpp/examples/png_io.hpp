// PNG reading and writing for the example program, through libpng's simplified API.
#pragma once

#include <string>

#include "mrdl/image.hpp"

namespace mrdl::png {

/// Read any PNG (gray, palette, RGB, with or without alpha, 8 or 16 bit) as HxWx3 uint8 RGB.
Image read_rgb(const std::string& path);

/// Write an HxWxC uint8 image (C = 1 or 3) as PNG, via a temporary file renamed into place.
void write(const std::string& path, const ImageView& image);

}  // namespace mrdl::png
