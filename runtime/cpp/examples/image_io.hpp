// Image files for the example program: PNG or TIFF, told apart by their signature.
#pragma once

#include <cstddef>
#include <string>

#include "mrdl/image.hpp"
#include "png_io.hpp"
#include "tiff_io.hpp"

namespace mrdl::image_io {

/// Read a PNG (png::read_rgb) or TIFF (tiff::read_rgb) file as HxWx3 RGB uint8, whichever its
/// first bytes say it is; anything else is an InputError naming both accepted formats.
Image read_rgb(const std::string& path, size_t max_pixels = kDefaultMaxPixels);

}  // namespace mrdl::image_io
